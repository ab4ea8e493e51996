#include "lg_http.h"

#include <stdint.h>
#include <string.h>

#define LG_HTTP_MAX_LENGTH_DIGITS 18

/* Returns 1 for a token character (RFC 9110 tchar). */
static int lg_http_is_token(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
    {
        return 1;
    }
    switch (c)
    {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
        return 1;
    default:
        return 0;
    }
}

/* Returns 1 for a byte allowed inside a reason phrase or a field value.  obs-text (>= 0x80) is
 * refused as well: the general parser decides about it. */
static int lg_http_is_text(unsigned char c)
{
    return c == '\t' || (c >= ' ' && c < 0x7f);
}

/* Returns 1 when name[0..length) equals the lower-case word of word_length bytes, ignoring
 * ASCII case. */
static int lg_http_same_word(const char* name, size_t length, const char* word,
                             size_t word_length)
{
    if (word_length != length)
    {
        return 0;
    }
    for (size_t i = 0; i < length; i++)
    {
        char c = name[i];
        if (c >= 'A' && c <= 'Z')
        {
            c = (char) (c - 'A' + 'a');
        }
        if (c != word[i])
        {
            return 0;
        }
    }
    return 1;
}

#define lg_http_name_is(name, length, word) \
    lg_http_same_word((name), (length), (word), sizeof(word) - 1)

/* Returns the index just past the CRLF ending the line that starts at start, checking that
 * every byte before it is text; -1 if the line is not complete or not clean. */
static long lg_http_line_end(const char* buffer, size_t length, size_t start)
{
    for (size_t i = start; i < length; i++)
    {
        unsigned char c = (unsigned char) buffer[i];
        if (c == '\r')
        {
            return (i + 1 < length && buffer[i + 1] == '\n') ? (long) (i + 2) : -1;
        }
        if (!lg_http_is_text(c))
        {
            return -1;
        }
    }
    return -1;
}

/* Parses 1*DIGIT; returns the value or -1. */
static int64_t lg_http_digits(const char* text, size_t length)
{
    int64_t value = 0;
    if (length == 0 || length > LG_HTTP_MAX_LENGTH_DIGITS)
    {
        return -1;
    }
    for (size_t i = 0; i < length; i++)
    {
        if (text[i] < '0' || text[i] > '9')
        {
            return -1;
        }
        value = value * 10 + (text[i] - '0');
    }
    return value;
}

int lg_http_whole_response(const char* buffer, size_t length, int* keep_alive)
{
    static const char version[] = "HTTP/1.1 ";
    const size_t version_length = sizeof(version) - 1;
    int status;
    int64_t content_length = -1;
    long position;

    *keep_alive = 1;
    if (length < version_length + 4 || memcmp(buffer, version, version_length) != 0)
    {
        return -1;
    }
    for (size_t i = version_length; i < version_length + 3; i++)
    {
        if (buffer[i] < '0' || buffer[i] > '9')
        {
            return -1;
        }
    }
    status = (buffer[version_length] - '0') * 100 + (buffer[version_length + 1] - '0') * 10
             + (buffer[version_length + 2] - '0');
    /* 1xx are interim, 204 and 304 never have a body whatever their headers say. */
    if (status < 200 || status > 599 || status == 204 || status == 304
        || buffer[version_length + 3] != ' ')
    {
        return -1;
    }
    position = lg_http_line_end(buffer, length, version_length + 4);
    while (position > 0)
    {
        size_t start = (size_t) position, name_end = start, value_start, value_end;
        long next;
        if (start + 1 < length && buffer[start] == '\r' && buffer[start + 1] == '\n')
        {
            size_t body = start + 2;
            if (content_length < 0 || (int64_t) (length - body) != content_length)
            {
                return -1;
            }
            return status;
        }
        while (name_end < length && lg_http_is_token((unsigned char) buffer[name_end]))
        {
            name_end++;
        }
        if (name_end == start || name_end >= length || buffer[name_end] != ':')
        {
            return -1;
        }
        next = lg_http_line_end(buffer, length, name_end + 1);
        if (next < 0)
        {
            return -1;
        }
        value_start = name_end + 1;
        value_end = (size_t) next - 2;
        while (value_start < value_end && (buffer[value_start] == ' ' || buffer[value_start] == '\t'))
        {
            value_start++;
        }
        while (value_end > value_start && (buffer[value_end - 1] == ' ' || buffer[value_end - 1] == '\t'))
        {
            value_end--;
        }
        if (lg_http_name_is(buffer + start, name_end - start, "content-length"))
        {
            if (content_length >= 0)
            {
                return -1;
            }
            content_length = lg_http_digits(buffer + value_start, value_end - value_start);
            if (content_length < 0)
            {
                return -1;
            }
        }
        else if (lg_http_name_is(buffer + start, name_end - start, "connection"))
        {
            if (lg_http_name_is(buffer + value_start, value_end - value_start, "close"))
            {
                *keep_alive = 0;
            }
            else if (!lg_http_name_is(buffer + value_start, value_end - value_start, "keep-alive"))
            {
                return -1;
            }
        }
        else if (lg_http_name_is(buffer + start, name_end - start, "transfer-encoding")
                 || lg_http_name_is(buffer + start, name_end - start, "proxy-connection"))
        {
            return -1;
        }
        position = next;
    }
    return -1;
}
