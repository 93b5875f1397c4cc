/*
 * secret_open: prints one sealed cell of a coordinator's store in plaintext,
 * for integration tests that must check what was sealed (the deploy key a
 * real sshd is given, a cell after `secrets rotate`). Never part of the
 * product: the coordinator itself returns none of these.
 *
 *   secret_open DB MASTER_KEY_FILE TABLE ROW COLUMN
 *
 * The cell must be one of secrets_columns (secrets.h). Exit 0 with the
 * plaintext on stdout; 1 when the cell is NULL, absent or does not open.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "crypto.h"
#include "secrets.h"

static int read_key(const char *path, uint8_t key[CRYPTO_KEY_LEN])
{
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	char hex[128] = "";
	size_t n = fread(hex, 1, sizeof hex - 1, f);
	fclose(f);
	while (n > 0 && (hex[n - 1] == '\n' || hex[n - 1] == ' '))
		n--;
	return crypto_unhex(hex, n, key, CRYPTO_KEY_LEN);
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: secret_open DB MASTER_KEY_FILE TABLE ROW COLUMN\n");
		return 2;
	}
	const char *table = argv[3], *row = argv[4], *column = argv[5];
	const struct secrets_column *col = NULL;
	for (size_t i = 0; i < secrets_column_count; i++)
		if (!strcmp(secrets_columns[i].table, table) && !strcmp(secrets_columns[i].column, column))
			col = &secrets_columns[i];
	if (!col) {
		fprintf(stderr, "secret_open: %s.%s is not a sealed column\n", table, column);
		return 2;
	}
	uint8_t key[CRYPTO_KEY_LEN];
	if (read_key(argv[2], key) < 0) {
		fprintf(stderr, "secret_open: %s: not a master key file\n", argv[2]);
		return 2;
	}
	sqlite3 *db = NULL;
	if (sqlite3_open_v2(argv[1], &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
		fprintf(stderr, "secret_open: %s: %s\n", argv[1], db ? sqlite3_errmsg(db) : "?");
		sqlite3_close(db);
		return 2;
	}
	char sql[256];
	snprintf(sql, sizeof sql, "SELECT %s FROM %s WHERE %s = ?", col->column, col->table,
		 col->key_column);
	sqlite3_stmt *st = NULL;
	int rc = 1;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, row, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL) {
			struct buf plain;
			buf_init(&plain, (size_t)64 << 20);
			struct err err;
			if (secrets_open(key, table, row, column, sqlite3_column_blob(st, 0),
					 (size_t)sqlite3_column_bytes(st, 0), &plain, &err) == 0) {
				fwrite(plain.data ? plain.data : "", 1, plain.len, stdout);
				rc = 0;
			} else {
				fprintf(stderr, "secret_open: %s\n", err.msg);
			}
			buf_free(&plain);
		} else {
			fprintf(stderr, "secret_open: no such cell\n");
		}
	} else {
		fprintf(stderr, "secret_open: %s\n", sqlite3_errmsg(db));
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return rc;
}
