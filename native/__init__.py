"""The C-accelerated core: HDR histograms, arrival schedules and the HTTP/1.1 load engine."""
