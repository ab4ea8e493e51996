/*
 * lg_http: the engine's shortcut past the general HTTP parser.  Nearly every answer a load
 * test reads is one small HTTP/1.1 response with a Content-Length, arriving in one read.
 * This recognizes exactly that shape, strictly, and nothing else: anything it is not sure of
 * (a partial or pipelined read, chunked or close-delimited bodies, 1xx/204/304, HTTP/1.0,
 * unusual Connection values, any byte outside the grammar) is left to llhttp (through
 * httptools), which stays the parser of record.  tests/test_http_shortcut.py checks the two
 * agree on every answer this accepts.
 *
 * No state, no allocation; safe without the GIL.
 */
#ifndef LG_HTTP_H
#define LG_HTTP_H

#include <stddef.h>

/* If buffer[0..length) is exactly one complete HTTP/1.1 response of the common shape, returns
 * its status code (200-599, not 204 or 304) and sets *keep_alive to whether the connection
 * stays open after it; otherwise returns -1 and the caller must use the general parser. */
int lg_http_whole_response(const char* buffer, size_t length, int* keep_alive);

#endif
