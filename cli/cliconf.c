#include "cliconf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"

static const struct config_key schema[] = {
	{.name = "host", .type = CONFIG_STRING, .help = "the coordinator's URL", .max = 2048},
	{.name = "api_key", .type = CONFIG_SECRET, .help = "the API key", .max = CLICONF_KEY_MAX},
	{.name = "ca_file", .type = CONFIG_PATH, .help = "a CA bundle for a private CA",
	 .max = CLICONF_PATH_MAX - 1},
};

int cliconf_path(char *out, size_t cap, struct err *err)
{
	const char *xdg = getenv("XDG_CONFIG_HOME");
	const char *home = getenv("HOME");
	int n;
	/* The XDG spec says a relative XDG_CONFIG_HOME is invalid and to be ignored. */
	if (xdg && xdg[0] == '/')
		n = snprintf(out, cap, "%s/slipway/config", xdg);
	else if (home && *home)
		n = snprintf(out, cap, "%s/.config/slipway/config", home);
	else
		return err_set(err, "neither XDG_CONFIG_HOME nor HOME is set: no place for the "
				    "config file (set SLIPWAY_HOST and SLIPWAY_API_KEY instead)");
	if (n < 0 || (size_t)n >= cap)
		return err_set(err, "the config file's path is too long");
	return 0;
}

char *cliconf_host_normalize(const char *host, struct err *err)
{
	if (!host || !*host) {
		err_set(err, "the coordinator URL is empty");
		return NULL;
	}
	size_t skip = strncasecmp(host, "https://", 8) == 0  ? 8
		      : strncasecmp(host, "http://", 7) == 0 ? 7
							     : 0;
	if (!skip) {
		err_set(err, "coordinator URL '%.80s': expected http://HOST[:PORT] or "
			     "https://HOST[:PORT]", host);
		return NULL;
	}
	size_t len = strlen(host);
	if (len > 2048) {
		err_set(err, "coordinator URL: longer than 2048 bytes");
		return NULL;
	}
	for (const unsigned char *p = (const unsigned char *)host; *p; p++) {
		if (*p <= ' ' || *p >= 0x7F || *p == '?' || *p == '#') {
			err_set(err, "coordinator URL '%.80s': no blanks, query or fragment allowed",
				host);
			return NULL;
		}
	}
	const char *auth_end = strchr(host + skip, '/');
	size_t auth_len = auth_end ? (size_t)(auth_end - (host + skip)) : strlen(host + skip);
	if (auth_len == 0) {
		err_set(err, "coordinator URL '%.80s': no host name", host);
		return NULL;
	}
	if (memchr(host + skip, '@', auth_len)) {
		err_set(err, "coordinator URL: credentials do not belong in the URL (use the API "
			     "key)");
		return NULL;
	}
	while (len > skip && host[len - 1] == '/')
		len--;
	char *out = strndup(host, len);
	if (!out)
		err_set(err, "out of memory");
	return out;
}

int cliconf_key_check(const char *key, struct err *err)
{
	size_t n = key ? strlen(key) : 0;
	if (n == 0)
		return err_set(err, "the API key is empty");
	if (n > CLICONF_KEY_MAX)
		return err_set(err, "the API key is longer than %d characters", CLICONF_KEY_MAX);
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)key[i];
		if (ch <= ' ' || ch >= 0x7F)
			return err_set(err, "the API key holds a blank or a non-printable "
					    "character (at position %zu)", i + 1);
	}
	return 0;
}

char *cliconf_read_key_file(const char *path, struct err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err_set(err, "%s: %s", path, strerror(errno));
		return NULL;
	}
	struct buf b;
	buf_init(&b, CLICONF_KEY_MAX + 8);
	char tmp[1024];
	for (;;) {
		ssize_t r = read(fd, tmp, sizeof tmp);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			err_set(err, "%s: %s", path, strerror(errno));
			goto fail;
		}
		if (r == 0)
			break;
		if (buf_append(&b, tmp, (size_t)r) < 0) {
			err_set(err, "%s: longer than an API key can be", path);
			goto fail;
		}
	}
	close(fd);
	if (b.len && b.data[b.len - 1] == '\n')
		b.len--;
	if (b.len && b.data[b.len - 1] == '\r')
		b.len--;
	if (b.data)
		b.data[b.len] = '\0';
	char *key = buf_detach(&b, NULL);
	if (!key) {
		err_set(err, "out of memory");
		return NULL;
	}
	if (cliconf_key_check(key, err) < 0) {
		err_prefix(err, "%s", path);
		free(key);
		return NULL;
	}
	return key;
fail:
	close(fd);
	buf_free(&b);
	return NULL;
}

static int set_str(char **dst, const char *v, struct err *err)
{
	free(*dst);
	*dst = v ? strdup(v) : NULL;
	if (v && !*dst)
		return err_set(err, "out of memory");
	return 0;
}

static int load_file(struct cliconf *c, FILE *warn, struct err *err)
{
	struct stat st;
	if (stat(c->path, &st) < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return 0;
		return err_set(err, "%s: %s", c->path, strerror(errno));
	}
	if (warn && (st.st_mode & 077))
		fprintf(warn, "slipway: warning: %s can be read by other users: run chmod 600 %s\n",
			c->path, c->path);
	struct config *cfg = config_load(schema, CONFIG_SCHEMA_LEN(schema), c->path, NULL, err);
	if (!cfg)
		return -1;
	int rc = 0;
	if (config_has(cfg, "host")) {
		c->host = cliconf_host_normalize(config_str(cfg, "host"), err);
		if (!c->host) {
			err_prefix(err, "%s", c->path);
			rc = -1;
			goto out;
		}
		c->host_from = "the config file";
	}
	if (config_has(cfg, "api_key")) {
		if (cliconf_key_check(config_str(cfg, "api_key"), err) < 0 ||
		    set_str(&c->api_key, config_str(cfg, "api_key"), err) < 0) {
			err_prefix(err, "%s", c->path);
			rc = -1;
			goto out;
		}
		c->key_from = "the config file";
	}
	if (config_has(cfg, "ca_file"))
		rc = set_str(&c->ca_file, config_str(cfg, "ca_file"), err);
out:
	config_free(cfg);
	return rc;
}

int cliconf_load(struct cliconf *c, FILE *warn, struct err *err)
{
	memset(c, 0, sizeof *c);
	const char *env_host = getenv("SLIPWAY_HOST");
	const char *env_key = getenv("SLIPWAY_API_KEY");
	const char *env_key_file = getenv("SLIPWAY_API_KEY_FILE");
	const char *env_ca = getenv("SLIPWAY_CA_FILE");
	const char *env_app = getenv("SLIPWAY_APP");
	struct err perr;
	if (cliconf_path(c->path, sizeof c->path, &perr) < 0)
		c->path[0] = '\0';
	if (c->path[0] && load_file(c, warn, err) < 0)
		goto fail;
	if (env_host && *env_host) {
		free(c->host);
		c->host = cliconf_host_normalize(env_host, err);
		if (!c->host) {
			err_prefix(err, "SLIPWAY_HOST");
			goto fail;
		}
		c->host_from = "SLIPWAY_HOST";
	}
	if (env_key && *env_key && env_key_file && *env_key_file) {
		err_set(err, "both SLIPWAY_API_KEY and SLIPWAY_API_KEY_FILE are set: keep one");
		goto fail;
	}
	if (env_key && *env_key) {
		if (cliconf_key_check(env_key, err) < 0) {
			err_prefix(err, "SLIPWAY_API_KEY");
			goto fail;
		}
		if (set_str(&c->api_key, env_key, err) < 0)
			goto fail;
		c->key_from = "SLIPWAY_API_KEY";
	} else if (env_key_file && *env_key_file) {
		char *key = cliconf_read_key_file(env_key_file, err);
		if (!key) {
			err_prefix(err, "SLIPWAY_API_KEY_FILE");
			goto fail;
		}
		free(c->api_key);
		c->api_key = key;
		c->key_from = "SLIPWAY_API_KEY_FILE";
	}
	if (env_ca && *env_ca && set_str(&c->ca_file, env_ca, err) < 0)
		goto fail;
	if (env_app && *env_app && set_str(&c->app, env_app, err) < 0)
		goto fail;
	return 0;
fail:
	cliconf_free(c);
	return -1;
}

void cliconf_free(struct cliconf *c)
{
	free(c->host);
	free(c->api_key);
	free(c->ca_file);
	free(c->app);
	c->host = c->api_key = c->ca_file = c->app = NULL;
}

/* Appends `key = "value"` with the config format's escapes. */
static int put_line(struct buf *b, const char *key, const char *value)
{
	if (buf_printf(b, "%s = \"", key) < 0)
		return -1;
	for (const char *p = value; *p; p++) {
		int rc = *p == '"'    ? buf_append_str(b, "\\\"")
			 : *p == '\\' ? buf_append_str(b, "\\\\")
				      : buf_append_byte(b, *p);
		if (rc < 0)
			return -1;
	}
	return buf_append_str(b, "\"\n");
}

static int make_dirs(const char *path, struct err *err)
{
	char dir[CLICONF_PATH_MAX];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = '\0';
	/* Each missing component, from the top: ~/.config may not exist yet either. */
	for (char *p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0700) < 0 && errno != EEXIST)
			return err_set(err, "mkdir %s: %s", dir, strerror(errno));
		*p = '/';
	}
	if (mkdir(dir, 0700) < 0 && errno != EEXIST)
		return err_set(err, "mkdir %s: %s", dir, strerror(errno));
	return 0;
}

int cliconf_save(const char *path, const char *host, const char *api_key, const char *ca_file,
		 struct err *err)
{
	struct buf b;
	buf_init(&b, (size_t)64 << 10);
	int rc = -1;
	char tmp[CLICONF_PATH_MAX + 32];
	if (strchr(host, '\n') || strchr(api_key, '\n') || (ca_file && strchr(ca_file, '\n')))
		return err_set(err, "a value holds a newline");
	if (buf_append_str(&b, "# written by `slipway login`; keep it private (mode 0600)\n") < 0 ||
	    put_line(&b, "host", host) < 0 || put_line(&b, "api_key", api_key) < 0 ||
	    (ca_file && put_line(&b, "ca_file", ca_file) < 0)) {
		buf_free(&b);
		return err_set(err, "out of memory");
	}
	if (make_dirs(path, err) < 0)
		goto out;
	int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
	if (n < 0 || (size_t)n >= sizeof tmp) {
		err_set(err, "%s: path too long", path);
		goto out;
	}
	unlink(tmp);
	/* Created 0600 from the first byte: the key is never readable by others. */
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		err_set(err, "%s: %s", tmp, strerror(errno));
		goto out;
	}
	size_t off = 0;
	while (off < b.len) {
		ssize_t w = write(fd, b.data + off, b.len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			err_set(err, "%s: %s", tmp, strerror(errno));
			close(fd);
			unlink(tmp);
			goto out;
		}
		off += (size_t)w;
	}
	if (fsync(fd) < 0 || close(fd) < 0) {
		err_set(err, "%s: %s", tmp, strerror(errno));
		unlink(tmp);
		goto out;
	}
	if (rename(tmp, path) < 0) {
		err_set(err, "rename to %s: %s", path, strerror(errno));
		unlink(tmp);
		goto out;
	}
	rc = 0;
out:
	buf_free(&b);
	return rc;
}
