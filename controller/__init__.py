"""Plans, the state machine, canary ramps, gates, merging, the journal and the verdict."""
