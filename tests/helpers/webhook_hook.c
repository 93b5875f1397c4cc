/*
 * webhook_hook: gives an existing app a GitLab hook id and token, sealed with
 * the coordinator's master key, straight in its SQLite store (the API has no
 * endpoint for it yet; the GitLab integration issue adds one). For benches
 * and tests; the coordinator may be running (SQLite locks, WAL).
 *
 *   webhook_hook --db PATH --master-key HEX --app NAME --hook ID --token TOKEN
 *                [--deploy-key FILE]   (the app's private deploy key, sealed too)
 */
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "crypto.h"
#include "secrets.h"

int main(int argc, char **argv)
{
	const char *db = NULL, *hex = NULL, *app = NULL, *hook = NULL, *token = NULL;
	const char *key_file = NULL;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--db"))
			db = argv[i + 1];
		else if (!strcmp(argv[i], "--master-key"))
			hex = argv[i + 1];
		else if (!strcmp(argv[i], "--app"))
			app = argv[i + 1];
		else if (!strcmp(argv[i], "--hook"))
			hook = argv[i + 1];
		else if (!strcmp(argv[i], "--token"))
			token = argv[i + 1];
		else if (!strcmp(argv[i], "--deploy-key"))
			key_file = argv[i + 1];
	}
	uint8_t key[CRYPTO_KEY_LEN];
	if (!db || !hex || !app || !hook || !token || strlen(hex) != 2 * CRYPTO_KEY_LEN ||
	    crypto_unhex(hex, strlen(hex), key, sizeof key) < 0) {
		fprintf(stderr, "usage: webhook_hook --db PATH --master-key HEX64 --app NAME "
				"--hook ID --token TOKEN\n");
		return 2;
	}
	struct buf sealed;
	buf_init(&sealed, 4096);
	if (secrets_seal(key, "apps", app, "hook_token", token, strlen(token), &sealed) < 0) {
		fprintf(stderr, "webhook_hook: cannot seal the token\n");
		return 1;
	}
	struct buf deploy;
	buf_init(&deploy, 1 << 16);
	if (key_file) {
		FILE *f = fopen(key_file, "r");
		char text[16384];
		size_t n = f ? fread(text, 1, sizeof text, f) : 0;
		if (f)
			fclose(f);
		if (n == 0 ||
		    secrets_seal(key, "apps", app, "deploy_key_private", text, n, &deploy) < 0) {
			fprintf(stderr, "webhook_hook: cannot read or seal %s\n", key_file);
			return 1;
		}
	}
	sqlite3 *h;
	sqlite3_stmt *st = NULL;
	int rc = 1;
	if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
	    sqlite3_busy_timeout(h, 10000) == SQLITE_OK &&
	    sqlite3_prepare_v2(h, "UPDATE apps SET hook_id = ?, hook_token = ?, "
				  "deploy_key_private = coalesce(?, deploy_key_private) WHERE name = ?",
			       -1, &st, NULL) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, hook, -1, SQLITE_STATIC);
		sqlite3_bind_blob(st, 2, sealed.data, (int)sealed.len, SQLITE_STATIC);
		if (key_file)
			sqlite3_bind_blob(st, 3, deploy.data, (int)deploy.len, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 3);
		sqlite3_bind_text(st, 4, app, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_DONE && sqlite3_changes(h) == 1)
			rc = 0;
	}
	if (rc != 0)
		fprintf(stderr, "webhook_hook: %s: %s\n", db,
			sqlite3_changes(h) == 0 ? "no such app" : sqlite3_errmsg(h));
	sqlite3_finalize(st);
	sqlite3_close(h);
	buf_free(&sealed);
	buf_free(&deploy);
	return rc;
}
