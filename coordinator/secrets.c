#include "secrets.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "settings.h"
#include "store.h"

const struct secrets_column secrets_columns[] = {
	{"apps", "name", "hook_token"},
	{"apps", "name", "deploy_key_private"},
	{"apps", "name", "gitlab_token"},
	{"apps", "name", "slack_url"},
	{"apps", "name", "environment"},
	{"releases", "id", "environment"},
};
const size_t secrets_column_count = sizeof secrets_columns / sizeof secrets_columns[0];

#define CANARY_KEY "secrets.canary"
#define CANARY_TEXT "slipway master key canary"
#define SEALED_MAX ((size_t)64 << 20)

static int make_aad(char *out, size_t cap, const char *table, const char *row, const char *column)
{
	int n = snprintf(out, cap, "%s:%s:%s", table, row, column);
	return n > 0 && (size_t)n < cap ? n : -1;
}

int secrets_seal(const uint8_t key[CRYPTO_KEY_LEN], const char *table, const char *row,
		 const char *column, const void *plain, size_t len, struct buf *out)
{
	char aad[512];
	int n = make_aad(aad, sizeof aad, table, row, column);
	if (n < 0)
		return -1;
	return crypto_seal(key, aad, (size_t)n, plain, len, out);
}

int secrets_open(const uint8_t key[CRYPTO_KEY_LEN], const char *table, const char *row,
		 const char *column, const void *sealed, size_t len, struct buf *out,
		 struct err *err)
{
	char aad[512];
	int n = make_aad(aad, sizeof aad, table, row, column);
	if (n < 0)
		return err_set(err, "%s.%s: row key too long", table, column);
	if (crypto_open(key, aad, (size_t)n, sealed, len, out) < 0)
		return err_set(err, "%s.%s of %s does not open (wrong master key, or tampered)",
			       table, column, row);
	return 0;
}

/* ---- the key file ---- */

static int fsync_dir_of(const char *path)
{
	char dir[4096];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash)
		*slash = '\0';
	else
		snprintf(dir, sizeof dir, ".");
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int rc = fsync(fd);
	close(fd);
	return rc;
}

/* Writes key as hex to path (0600, O_EXCL via a temporary, fsynced). */
static int write_key_file(const char *path, const uint8_t key[CRYPTO_KEY_LEN], struct err *err)
{
	char tmp[4200];
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	unlink(tmp);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return err_set(err, "create %s: %s", tmp, strerror(errno));
	char hex[2 * CRYPTO_KEY_LEN + 2];
	crypto_hex(key, CRYPTO_KEY_LEN, hex);
	hex[2 * CRYPTO_KEY_LEN] = '\n';
	hex[2 * CRYPTO_KEY_LEN + 1] = '\0';
	ssize_t w = write(fd, hex, 2 * CRYPTO_KEY_LEN + 1);
	int ok = w == 2 * CRYPTO_KEY_LEN + 1 && fsync(fd) == 0;
	int saved = errno;
	close(fd);
	if (!ok) {
		unlink(tmp);
		return err_set(err, "write %s: %s", tmp, strerror(saved));
	}
	if (rename(tmp, path) < 0) {
		saved = errno;
		unlink(tmp);
		return err_set(err, "rename to %s: %s", path, strerror(saved));
	}
	fsync_dir_of(path);
	return 0;
}

/* 1 read, 0 absent, -1 error. */
static int read_key_file(const char *path, uint8_t key[CRYPTO_KEY_LEN], struct err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT)
			return 0;
		return err_set(err, "open %s: %s", path, strerror(errno));
	}
	struct stat sb;
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		close(fd);
		return err_set(err, "%s: not a regular file", path);
	}
	if (sb.st_mode & 077) {
		close(fd);
		return err_set(err, "%s: mode %03o lets others read the master key; chmod 600 it",
			       path, (unsigned)(sb.st_mode & 0777));
	}
	char text[128];
	ssize_t n = read(fd, text, sizeof text);
	close(fd);
	if (n < 0)
		return err_set(err, "read %s: %s", path, strerror(errno));
	if (n == CRYPTO_KEY_LEN) { /* raw bytes */
		memcpy(key, text, CRYPTO_KEY_LEN);
		return 1;
	}
	while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
		n--;
	if (n != 2 * CRYPTO_KEY_LEN || crypto_unhex(text, (size_t)n, key, CRYPTO_KEY_LEN) < 0)
		return err_set(err, "%s: expected 64 hex digits (or 32 raw bytes)", path);
	return 1;
}

int secrets_load_master(const struct config *cfg, uint8_t key[CRYPTO_KEY_LEN],
			char *key_file_out, size_t cap, struct err *err)
{
	if (key_file_out && cap)
		key_file_out[0] = '\0';
	if (config_has(cfg, "secrets.master_key")) {
		const char *hex = config_str(cfg, "secrets.master_key");
		if (strlen(hex) != 2 * CRYPTO_KEY_LEN ||
		    crypto_unhex(hex, strlen(hex), key, CRYPTO_KEY_LEN) < 0)
			return err_set(err, "secrets.master_key: expected 64 hex digits");
		return 0;
	}
	char path[4096];
	coord_settings_path(cfg, "secrets.master_key_path", "master.key", path, sizeof path);
	if (key_file_out && cap)
		snprintf(key_file_out, cap, "%s", path);
	int rc = read_key_file(path, key, err);
	if (rc < 0)
		return -1;
	if (rc == 1)
		return 0;
	if (crypto_random(key, CRYPTO_KEY_LEN) < 0)
		return err_set(err, "no randomness for the master key");
	if (write_key_file(path, key, err) < 0)
		return -1;
	log_info("secrets.master_key_created", "file=%s", path);
	return 0;
}

/* ---- the canary ---- */

struct canary {
	const uint8_t *key;
	int present;
	int opens;
	struct buf sealed;
};

static int canary_read_tx(struct store_tx *tx, void *arg)
{
	struct canary *cn = arg;
	sqlite3_stmt *st = store_stmt(tx, "SELECT value FROM meta WHERE key = '" CANARY_KEY "'");
	if (!st)
		return -1;
	int rc = store_step(tx, st);
	if (rc < 0)
		return -1;
	if (rc != SQLITE_ROW)
		return 0;
	cn->present = 1;
	const char *hex = store_col_text(st, 0);
	size_t n = strlen(hex) / 2;
	uint8_t *raw = malloc(n + 1);
	if (!raw)
		return err_set(&tx->err, "out of memory");
	if (crypto_unhex(hex, 2 * n, raw, n) == 0) {
		struct buf plain;
		buf_init(&plain, 4096);
		cn->opens = secrets_open(cn->key, "meta", CANARY_KEY, "value", raw, n, &plain,
					 NULL) == 0 &&
			    strcmp(plain.data ? plain.data : "", CANARY_TEXT) == 0;
		buf_free(&plain);
	}
	free(raw);
	return 0;
}

static int canary_write(struct store_tx *tx, const uint8_t key[CRYPTO_KEY_LEN])
{
	struct buf sealed;
	buf_init(&sealed, 4096);
	if (secrets_seal(key, "meta", CANARY_KEY, "value", CANARY_TEXT, strlen(CANARY_TEXT),
			 &sealed) < 0) {
		buf_free(&sealed);
		return err_set(&tx->err, "cannot seal the canary");
	}
	char *hex = malloc(2 * sealed.len + 1);
	if (!hex) {
		buf_free(&sealed);
		return err_set(&tx->err, "out of memory");
	}
	crypto_hex((const uint8_t *)sealed.data, sealed.len, hex);
	buf_free(&sealed);
	sqlite3_stmt *st = store_stmt(tx, "INSERT INTO meta(key, value) VALUES ('" CANARY_KEY
					  "', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value");
	int rc = -1;
	if (st) {
		sqlite3_bind_text(st, 1, hex, -1, SQLITE_TRANSIENT);
		rc = store_step(tx, st) == SQLITE_DONE ? 0 : -1;
	}
	free(hex);
	return rc;
}

static int canary_write_tx(struct store_tx *tx, void *arg)
{
	return canary_write(tx, arg);
}

int secrets_check_canary(struct store *s, uint8_t key[CRYPTO_KEY_LEN], const char *key_file,
			 struct err *err)
{
	struct canary cn = {.key = key};
	if (store_run(s, canary_read_tx, &cn, err) < 0)
		return -1;
	char next_path[4200] = "";
	if (key_file && *key_file)
		snprintf(next_path, sizeof next_path, "%s.new", key_file);
	if (!cn.present)
		return store_run(s, canary_write_tx, key, err);
	if (cn.opens) {
		if (next_path[0] && unlink(next_path) == 0)
			log_warn("secrets.rotation_abandoned",
				 "file=%s reason=\"an interrupted rotation had not committed\"",
				 next_path);
		return 0;
	}
	if (next_path[0]) {
		uint8_t next[CRYPTO_KEY_LEN];
		struct err e2;
		if (read_key_file(next_path, next, &e2) == 1) {
			struct canary c2 = {.key = next};
			if (store_run(s, canary_read_tx, &c2, err) < 0)
				return -1;
			if (c2.opens) {
				if (rename(next_path, key_file) < 0)
					return err_set(err, "rename %s: %s", next_path,
						       strerror(errno));
				fsync_dir_of(key_file);
				memcpy(key, next, CRYPTO_KEY_LEN);
				log_warn("secrets.rotation_completed",
					 "file=%s reason=\"finished an interrupted rotation\"",
					 key_file);
				return 0;
			}
		}
	}
	return err_set(err, "the master key does not open this store's secrets "
			    "(wrong secrets.master_key or master key file?)");
}

/* ---- rotation ---- */

struct cell {
	char *row;
	struct buf sealed;
	struct cell *next;
};

static int reseal_column(struct store_tx *tx, const struct secrets_column *col,
			 const uint8_t *old_key, const uint8_t *new_key, size_t *n_cells)
{
	char sql[256];
	/* Table and column names come from the static list above, never from input. */
	snprintf(sql, sizeof sql, "SELECT %s, %s FROM %s WHERE %s IS NOT NULL", col->key_column,
		 col->column, col->table, col->column);
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(tx->db, sql, -1, &st, NULL) != SQLITE_OK)
		return err_set(&tx->err, "%s", sqlite3_errmsg(tx->db));
	struct cell *cells = NULL;
	int rc, failed = 0;
	while (!failed && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *row = (const char *)sqlite3_column_text(st, 0);
		const void *blob = sqlite3_column_blob(st, 1);
		size_t len = (size_t)sqlite3_column_bytes(st, 1);
		struct buf plain;
		buf_init(&plain, SEALED_MAX);
		struct cell *c = calloc(1, sizeof *c);
		if (!c || !row) {
			free(c);
			buf_free(&plain);
			failed = err_set(&tx->err, "out of memory");
			break;
		}
		c->row = strdup(row);
		buf_init(&c->sealed, SEALED_MAX);
		c->next = cells;
		cells = c;
		if (!c->row ||
		    secrets_open(old_key, col->table, row, col->column, blob, len, &plain,
				 &tx->err) < 0 ||
		    secrets_seal(new_key, col->table, row, col->column, plain.data ? plain.data : "",
				 plain.len, &c->sealed) < 0) {
			if (!tx->err.msg[0])
				err_set(&tx->err, "cannot re-seal %s.%s of %s", col->table,
					col->column, row);
			failed = -1;
		}
		buf_free(&plain);
	}
	if (!failed && rc != SQLITE_DONE)
		failed = err_set(&tx->err, "%s", sqlite3_errmsg(tx->db));
	sqlite3_finalize(st);
	snprintf(sql, sizeof sql, "UPDATE %s SET %s = ? WHERE %s = ?", col->table, col->column,
		 col->key_column);
	sqlite3_stmt *up = NULL;
	if (!failed && sqlite3_prepare_v2(tx->db, sql, -1, &up, NULL) != SQLITE_OK)
		failed = err_set(&tx->err, "%s", sqlite3_errmsg(tx->db));
	while (cells) {
		struct cell *c = cells;
		cells = c->next;
		if (!failed) {
			sqlite3_reset(up);
			sqlite3_bind_blob(up, 1, c->sealed.data, (int)c->sealed.len, SQLITE_STATIC);
			sqlite3_bind_text(up, 2, c->row, -1, SQLITE_STATIC);
			if (sqlite3_step(up) != SQLITE_DONE)
				failed = err_set(&tx->err, "%s", sqlite3_errmsg(tx->db));
			else if (n_cells)
				(*n_cells)++;
		}
		free(c->row);
		buf_free(&c->sealed);
		free(c);
	}
	sqlite3_finalize(up);
	return failed ? -1 : 0;
}

int secrets_reseal_tx(struct store_tx *tx, const uint8_t old_key[CRYPTO_KEY_LEN],
		      const uint8_t new_key[CRYPTO_KEY_LEN], size_t *n_cells)
{
	if (n_cells)
		*n_cells = 0;
	for (size_t i = 0; i < secrets_column_count; i++)
		if (reseal_column(tx, &secrets_columns[i], old_key, new_key, n_cells) < 0)
			return -1;
	return canary_write(tx, new_key);
}

struct rotate {
	const uint8_t *old_key;
	const uint8_t *new_key;
	size_t n;
};

static int rotate_tx(struct store_tx *tx, void *arg)
{
	struct rotate *r = arg;
	return secrets_reseal_tx(tx, r->old_key, r->new_key, &r->n);
}

int secrets_rotate(struct store *s, const uint8_t old_key[CRYPTO_KEY_LEN], const char *key_file,
		   FILE *out, size_t *n_cells, struct err *err)
{
	uint8_t new_key[CRYPTO_KEY_LEN];
	if (crypto_random(new_key, sizeof new_key) < 0)
		return err_set(err, "no randomness for the new key");
	char next_path[4200] = "";
	if (key_file && *key_file) {
		snprintf(next_path, sizeof next_path, "%s.new", key_file);
		if (write_key_file(next_path, new_key, err) < 0)
			return -1;
	} else if (out) {
		char hex[2 * CRYPTO_KEY_LEN + 1];
		crypto_hex(new_key, CRYPTO_KEY_LEN, hex);
		fprintf(out, "new master key (set secrets.master_key to it before the next start):\n"
			     "%s\n", hex);
		fflush(out);
	}
	struct rotate r = {.old_key = old_key, .new_key = new_key};
	if (store_run(s, rotate_tx, &r, err) < 0) {
		if (next_path[0])
			unlink(next_path);
		return -1;
	}
	if (next_path[0]) {
		if (rename(next_path, key_file) < 0)
			return err_set(err, "rename %s: %s (the next start finishes the rotation)",
				       next_path, strerror(errno));
		fsync_dir_of(key_file);
	}
	if (n_cells)
		*n_cells = r.n;
	return 0;
}
