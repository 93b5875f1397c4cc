/*
 * secrets: the master key and the sealing of secret columns at rest.
 *
 * Every secret the store keeps (release and app environments, webhook tokens,
 * deploy keys, GitLab tokens, Slack URLs) is sealed with AES-256-GCM
 * (crypto_seal) under the master key. The associated data names the cell,
 * "<table>:<row key>:<column>" (e.g. "apps:web:environment",
 * "releases:r_12ab:environment"), so a sealed value copied into another row or
 * column does not open.
 *
 * The master key comes from secrets.master_key (64 hex digits, e.g. from the
 * environment) or from the file secrets.master_key_path (default
 * <data.dir>/master.key), created at first start with mode 0600 (a file that
 * group or others may read is refused). A sealed canary in the meta table
 * tells a wrong key at start-up, before anything is served.
 *
 * Rotation (`slipway-coordinator secrets rotate`, with the daemon stopped):
 * a new key is written to <key file>.new (0600, fsynced), every sealed cell
 * listed in secrets_columns is opened with the old key and sealed with the
 * new one in ONE transaction, then the new file replaces the old. A crash
 * between the commit and the rename is repaired at the next start: the
 * canary opens with the .new key, which then replaces the old file.
 *
 * Threads: secrets_seal/secrets_open are pure and thread-safe (the store
 * thread uses them); load and rotate block and are for start-up and offline
 * commands. Ownership: results go into caller-owned bufs.
 */
#ifndef SLIPWAY_COORD_SECRETS_H
#define SLIPWAY_COORD_SECRETS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "buf.h"
#include "crypto.h"
#include "err.h"

struct config;
struct store;
struct store_tx;

/* A sealed column: table, its key column, the sealed column. */
struct secrets_column {
	const char *table;
	const char *key_column;
	const char *column;
};
extern const struct secrets_column secrets_columns[];
extern const size_t secrets_column_count;

/* Seals plain into out (appended) for cell table:row:column; -1 on error. */
int secrets_seal(const uint8_t key[CRYPTO_KEY_LEN], const char *table, const char *row,
		 const char *column, const void *plain, size_t len, struct buf *out);
/* Opens a sealed cell into out (appended, NUL-terminated by buf); -1 (err) when
 * it does not open: wrong key, wrong cell, tampered. */
int secrets_open(const uint8_t key[CRYPTO_KEY_LEN], const char *table, const char *row,
		 const char *column, const void *sealed, size_t len, struct buf *out,
		 struct err *err);

/* Loads (or, for the file, creates) the master key as configured. key_file_out
 * (may be NULL, cap bytes) receives the key file path ("" when the key came
 * from the configuration). Blocks. */
int secrets_load_master(const struct config *cfg, uint8_t key[CRYPTO_KEY_LEN],
			char *key_file_out, size_t cap, struct err *err);

/* Checks the canary (creating it on a fresh store); repairs an interrupted
 * rotation when key_file is set. May replace *key. Blocks. */
int secrets_check_canary(struct store *s, uint8_t key[CRYPTO_KEY_LEN], const char *key_file,
			 struct err *err);

/* Re-seals every sealed cell under a new key (see above). With a key from the
 * configuration (key_file ""), the new key is printed as hex to `out` before the
 * commit: put it in the configuration before the next start. n_cells (may be
 * NULL) gets the number of cells re-sealed. Blocks. */
int secrets_rotate(struct store *s, const uint8_t old_key[CRYPTO_KEY_LEN], const char *key_file,
		   FILE *out, size_t *n_cells, struct err *err);

/* Re-seals every cell inside one transaction (used by secrets_rotate; exposed
 * for tests). */
int secrets_reseal_tx(struct store_tx *tx, const uint8_t old_key[CRYPTO_KEY_LEN],
		      const uint8_t new_key[CRYPTO_KEY_LEN], size_t *n_cells);

#endif
