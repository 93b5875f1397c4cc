/*
 * link: linking an app to its GitLab project, and unlinking it
 * (docs/api.md, "GitLab link and Slack").
 *
 *   POST   /v1/apps/{app}/link   (admin)  {gitlab_url, project, token, branch?, deploy?}
 *   DELETE /v1/apps/{app}/link   (admin)  ?force=1 clears the link even when GitLab refuses
 *   GET    /v1/apps/{app}/link   (read)   what is linked (never a secret)
 * plus Slack's routes (slack.h), registered by link_register too.
 *
 * Linking, step by step (one flow per app at a time: a second is 409):
 *   1. read the app's row (404 when unknown): an existing link's hook id,
 *      hook token and key pair are REUSED, so linking twice changes nothing at
 *      GitLab (same hook URL, same key); a link to another project is 409
 *      (unlink first);
 *   2. no key pair yet: one is generated on the worker pool (sshkey.h:
 *      ECDSA P-256, OpenSSH formats), never on the loop;
 *   3. GitLab (gitlab.h): GET the project (id, default branch,
 *      ssh_url_to_repo); find the deploy key by its key material, else add it
 *      read-only (can_push false); find the webhook by its URL
 *      <server.public_url>/hooks/gitlab/<hook id>, and update it, else create
 *      it with a random 32-byte token, push events (+ tag push or pipeline
 *      events by deploy mode), the branch filter, SSL verification on;
 *   4. ONE store transaction writes everything, secrets sealed (secrets.h):
 *      hook_id, hook_token, deploy_key_public/private, gitlab_url,
 *      gitlab_token, gitlab_hook_id, gitlab_key_id, project, project_id,
 *      repo_url (= ssh_url_to_repo: what the builder clones with the deploy
 *      key), branch and deploy when given; known_hosts is cleared when
 *      repo_url changes.
 * Any failure undoes what THIS flow created at GitLab (the hook, then the
 * key; what an earlier link made is left alone) and stores nothing: the app
 * is exactly as before. GitLab's refusals answer 502 {"error": {"code":
 * "gitlab_error", "message": <gitlab.h's sentence>, "gitlab_status": N}}.
 *
 * Unlinking deletes the webhook and the deploy key at GitLab (already gone
 * counts as done) with the stored token, then clears the link's columns in
 * one transaction. If GitLab refuses, nothing is cleared (the same call can be
 * repeated) unless ?force=1, which clears anyway and reports what was left.
 *
 * Secrets: the GitLab token and the private key are never returned by any
 * API; the token, hook token and private key are registered with
 * log_redact_add as soon as they are known.
 *
 * Ownership: link_register allocates the module (c->link) and the Slack
 * notifier (c->slack); link_free releases both (main.c, at shutdown, after
 * store_close and before http_client_free: Slack cancels its requests). A
 * flow still in progress then keeps the module until it ends.
 * Threads: loop thread only; nothing blocks (key generation on the worker
 * pool, SQL on the store thread, GitLab through http_client).
 */
#ifndef SLIPWAY_COORD_LINK_H
#define SLIPWAY_COORD_LINK_H

#include <stddef.h>

struct coord;
struct store_tx;

/* Registers the link and Slack routes on c->server and starts the Slack
 * notifier. Needs c->server, c->store, c->http and c->workers. -1 on failure
 * (logged). */
int link_register(struct coord *c);

/* Frees what link_register made (harmless when it never ran). */
void link_free(struct coord *c);

/* Inside a store operation: 1 when app is linked to GitLab (a webhook or a
 * deploy key is registered there), its project path into project (may be
 * NULL); 0 when not linked or unknown; -1 store error (tx->err). */
int link_linked_tx(struct store_tx *tx, const char *app, char *project, size_t cap);

#endif
