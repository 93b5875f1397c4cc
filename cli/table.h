/*
 * table: what the CLI prints for people: aligned tables with a header row,
 * "5 minutes ago" times and "1m12s" durations.
 *
 * A table is a header plus rows of cells, all copied in. Rendering pads every
 * column but the last to its widest cell (counted in UTF-8 code points, so
 * "é" is one column; East Asian wide characters are not measured), with two
 * spaces between columns and no trailing blanks. An empty or NULL cell shows
 * as "-". Cells come from the coordinator, i.e. from outside: control
 * characters are replaced (a newline or tab by a space, anything else,
 * ESC included, by '?') and bytes that are not valid UTF-8 by '?', so a
 * commit message cannot break the layout or drive the terminal.
 *
 * Ownership: table_new returns a table freed by table_free; table_render
 * appends to the caller's buf. Memory errors make table_add/table_render
 * return -1. Pure apart from table_print's write; any thread.
 */
#ifndef SLIPWAY_CLI_TABLE_H
#define SLIPWAY_CLI_TABLE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "buf.h"

#define TABLE_COLS_MAX 16
#define TABLE_CELL_MAX 4096   /* longer cells are cut (with "...") */

struct table;

struct table *table_new(size_t ncols, const char *const *headers);
void table_free(struct table *t);

/* Adds a row of ncols cells (copied, cleaned as above). */
int table_add(struct table *t, const char *const *cells);
size_t table_rows(const struct table *t);

int table_render(const struct table *t, struct buf *out);
/* Renders and writes to out; -1 when memory is short or the write fails. */
int table_print(const struct table *t, FILE *out);

/* The cleaning table_add applies, for single values printed outside tables.
 * Writes at most cap-1 bytes plus NUL into out; returns out. */
char *table_clean(const char *s, char *out, size_t cap);

/* Display width of s in columns (UTF-8 code points). */
size_t table_width(const char *s);

#define TABLE_TIME_MAX 32

/* "just now", "1 second ago", "5 minutes ago", "3 hours ago", "2 days ago",
 * "4 months ago", "2 years ago" (each unit floored), "in 5 minutes" for a time
 * ahead of now_ms (clock skew), "-" for then_ms <= 0. Returns out. */
char *table_ago(int64_t then_ms, int64_t now_ms, char out[TABLE_TIME_MAX]);

/* "0s", "850ms", "12s", "1m12s", "5m0s", "2h3m", "3d4h" (floored to the unit
 * shown); negative counts as 0. Returns out. */
char *table_duration(int64_t ms, char out[TABLE_TIME_MAX]);

/* "512 B", "12.0 KB", "4.5 MB", "1.2 GB" (binary units, one decimal). */
char *table_bytes(uint64_t n, char out[TABLE_TIME_MAX]);

#endif
