#include "sts.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "awsquery.h"
#include "buf.h"
#include "clock.h"
#include "crypto.h"
#include "http_client.h"
#include "log.h"

#define QUERY_PARAMS_MAX 16
#define PROOF_HEADERS_MAX 4
#define SKEW_ALLOWED_MS (5 * 60 * 1000) /* X-Amz-Date up to 5 minutes ahead, as AWS allows */
#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_ATTEMPTS 3
#define REPLAY_BUCKETS 1024
#define REPLAY_DEFAULT_MAX 100000

/* ---- agent side ---- */

int sts_presign_identity(struct sigv4_signer *s, const struct aws_credentials *creds,
			 const char *endpoint, const char *server, int64_t expires_s,
			 int64_t time_ms, struct sts_proof *out, struct err *err)
{
	memset(out, 0, sizeof *out);
	if (!s || !creds)
		return err_set(err, "sts: signer and credentials are required");
	if (expires_s < 1 || expires_s > STS_EXPIRES_MAX_S)
		return err_set(err, "sts: expiry %lld s is outside 1..%d", (long long)expires_s,
			       STS_EXPIRES_MAX_S);
	char url[1024], path[256];
	if (endpoint && *endpoint)
		snprintf(url, sizeof url, "%s", endpoint);
	else
		snprintf(url, sizeof url, "https://sts.%s.amazonaws.com", s->region);
	if (awsquery_split_endpoint(url, out->host, sizeof out->host, path, sizeof path, err) < 0)
		return err_prefix(err, "sts");
	if (strcmp(path, "/") != 0)
		return err_set(err, "sts: endpoint \"%s\" must have no path", url);
	if (server && *server) {
		if (strlen(server) >= sizeof out->server || strpbrk(server, " \t\r\n"))
			return err_set(err, "sts: bad server name");
		snprintf(out->server, sizeof out->server, "%s", server);
	}
	if (crypto_random_hex(out->nonce, 16) < 0)
		return err_set(err, "sts: no randomness for the nonce");
	struct sigv4_header h[] = {{"Host", out->host},
				   {STS_NONCE_HEADER, out->nonce},
				   {STS_SERVER_HEADER, out->server}};
	struct sigv4_request req = {
		.method = "GET",
		.path = "/",
		.query = "Action=GetCallerIdentity&Version=" STS_VERSION,
		.headers = h,
		.header_count = out->server[0] ? 3 : 2,
		.payload_kind = SIGV4_PAYLOAD_BYTES,
		.time_ms = time_ms,
	};
	struct sigv4_result r;
	if (sigv4_presign(s, creds, &req, expires_s, &r, err) < 0)
		return err_prefix(err, "sts");
	const char *scheme_end = strstr(url, "://") + 3;
	struct buf b;
	buf_init(&b, STS_PROOF_URL_MAX);
	int rc = buf_printf(&b, "%.*s%s/?%s", (int)(scheme_end - url), url, out->host,
			    r.presigned_query);
	sigv4_result_free(&r);
	if (rc < 0 || !b.data) {
		buf_free(&b);
		return err_set(err, "sts: the presigned URL is longer than %d bytes",
			       STS_PROOF_URL_MAX);
	}
	out->url = buf_detach(&b, NULL);
	return 0;
}

void sts_proof_free(struct sts_proof *p)
{
	if (!p)
		return;
	if (p->url) {
		memset(p->url, 0, strlen(p->url)); /* it carries the session token */
		free(p->url);
	}
	memset(p, 0, sizeof *p);
}

cJSON *sts_proof_json(const struct sts_proof *p)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *h = o ? cJSON_AddObjectToObject(o, "headers") : NULL;
	if (!h || !cJSON_AddStringToObject(o, "url", p->url ? p->url : "") ||
	    !cJSON_AddStringToObject(h, "Host", p->host) ||
	    (p->nonce[0] && !cJSON_AddStringToObject(h, STS_NONCE_HEADER, p->nonce)) ||
	    (p->server[0] && !cJSON_AddStringToObject(h, STS_SERVER_HEADER, p->server))) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

/* ---- what STS says ---- */

static int all_digits(const char *s, size_t n)
{
	if (strlen(s) != n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return 0;
	return 1;
}

/* IAM names: [\w+=,.@-] (the IAM User Guide's quotas: role names 1..64,
 * session names 2..64). */
static int iam_name_ok(const char *s, size_t n, size_t min, size_t max)
{
	if (n < min || n > max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!(isalnum(c) || strchr("_+=,.@-", c)))
			return 0;
	}
	return 1;
}

int sts_parse_arn(const char *arn, struct sts_identity *out, struct err *err)
{
	/* arn:PARTITION:sts::ACCOUNT:assumed-role/ROLE/SESSION
	 * arn:PARTITION:iam::ACCOUNT:user/PATH/NAME, ...:root */
	out->partition[0] = out->type[0] = out->role[0] = out->session[0] = '\0';
	size_t n = strlen(arn);
	if (n >= STS_ARN_MAX)
		return err_set(err, "sts: ARN too long");
	if (strncmp(arn, "arn:", 4) != 0)
		return err_set(err, "sts: \"%.80s\" is not an ARN", arn);
	const char *f[6];
	size_t fl[6];
	const char *p = arn;
	for (int i = 0; i < 5; i++) {
		const char *c = strchr(p, ':');
		if (!c)
			return err_set(err, "sts: \"%.80s\" is not an ARN", arn);
		f[i] = p;
		fl[i] = (size_t)(c - p);
		p = c + 1;
	}
	f[5] = p;
	fl[5] = strlen(p);
	/* f: "arn", partition, service, region, account, resource */
	if (fl[1] == 0 || fl[1] >= sizeof out->partition)
		return err_set(err, "sts: bad partition in \"%.80s\"", arn);
	for (size_t i = 0; i < fl[1]; i++)
		if (!(islower((unsigned char)f[1][i]) || f[1][i] == '-'))
			return err_set(err, "sts: bad partition in \"%.80s\"", arn);
	memcpy(out->partition, f[1], fl[1]);
	out->partition[fl[1]] = '\0';
	if (fl[3] != 0)
		return err_set(err, "sts: a caller ARN has no region: \"%.80s\"", arn);
	char account[13];
	if (fl[4] != 12)
		return err_set(err, "sts: bad account in \"%.80s\"", arn);
	memcpy(account, f[4], 12);
	account[12] = '\0';
	if (!all_digits(account, 12))
		return err_set(err, "sts: bad account in \"%.80s\"", arn);
	if (out->account[0] && strcmp(out->account, account) != 0)
		return err_set(err, "sts: the ARN's account %s is not the answer's %s", account,
			       out->account);
	const char *res = f[5];
	const char *slash = strchr(res, '/');
	size_t tl = slash ? (size_t)(slash - res) : strlen(res);
	if (fl[2] == 3 && memcmp(f[2], "sts", 3) == 0 && tl == 12 &&
	    memcmp(res, "assumed-role", 12) == 0) {
		/* "assumed-role" alone has no role: refused, never read past. */
		const char *role = slash ? slash + 1 : NULL;
		const char *s2 = role ? strchr(role, '/') : NULL;
		if (!s2 || !iam_name_ok(role, (size_t)(s2 - role), 1, 64) ||
		    !iam_name_ok(s2 + 1, strlen(s2 + 1), 2, 64))
			return err_set(err, "sts: bad assumed-role ARN \"%.120s\"", arn);
		snprintf(out->type, sizeof out->type, "assumed-role");
		snprintf(out->role, sizeof out->role, "%.*s", (int)(s2 - role), role);
		snprintf(out->session, sizeof out->session, "%s", s2 + 1);
		return 0;
	}
	if ((fl[2] == 3 && memcmp(f[2], "iam", 3) == 0) ||
	    (fl[2] == 3 && memcmp(f[2], "sts", 3) == 0)) {
		if (tl == 0 || tl >= sizeof out->type)
			return err_set(err, "sts: bad ARN resource in \"%.80s\"", arn);
		snprintf(out->type, sizeof out->type, "%.*s", (int)tl, res);
		return 0;
	}
	return err_set(err, "sts: \"%.80s\" is not an IAM or STS ARN", arn);
}

int sts_parse_identity(const char *xml, size_t len, struct sts_identity *out, struct err *err)
{
	memset(out, 0, sizeof *out);
	static const char base[] = "GetCallerIdentityResponse/GetCallerIdentityResult/";
	char path[128];
	struct {
		const char *name;
		char *dst;
		size_t cap;
	} fields[] = {
		{"Account", out->account, sizeof out->account},
		{"Arn", out->arn, sizeof out->arn},
		{"UserId", out->user_id, sizeof out->user_id},
	};
	for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
		snprintf(path, sizeof path, "%s%s", base, fields[i].name);
		int rc = awsquery_xml_text(xml, len, path, fields[i].dst, fields[i].cap, err);
		if (rc < 0)
			return err_prefix(err, "sts: GetCallerIdentity answer");
		if (rc == 0 || !fields[i].dst[0])
			return err_set(err, "sts: GetCallerIdentity answer without %s",
				       fields[i].name);
	}
	if (!all_digits(out->account, 12))
		return err_set(err, "sts: Account \"%.20s\" is not 12 digits", out->account);
	for (const char *c = out->user_id; *c; c++)
		if ((unsigned char)*c < 0x21 || (unsigned char)*c > 0x7e)
			return err_set(err, "sts: UserId holds unprintable characters");
	return sts_parse_arn(out->arn, out, err);
}

/* 1 when `item` is one of the comma-separated entries of list (spaces around them ignored). */
static int in_list(const char *list, const char *item)
{
	size_t il = strlen(item);
	const char *p = list ? list : "";
	while (*p) {
		while (*p == ' ' || *p == ',')
			p++;
		const char *e = p;
		while (*e && *e != ',')
			e++;
		const char *t = e;
		while (t > p && t[-1] == ' ')
			t--;
		if ((size_t)(t - p) == il && il && memcmp(p, item, il) == 0)
			return 1;
		p = e;
	}
	return 0;
}

int sts_identity_allowed(const struct sts_identity *id, const char *accounts,
			 const char *roles, const char *instance_id, struct err *err)
{
	if (strcmp(id->type, "assumed-role") != 0)
		return err_set(err, "identity %.200s is not an assumed role (instances use roles)",
			       id->arn);
	if (!in_list(accounts, id->account))
		return err_set(err, "account %s is not one of agents.aws_accounts", id->account);
	if (!in_list(roles, id->role))
		return err_set(err, "role %s is not one of agents.aws_roles", id->role);
	if (instance_id && strcmp(id->session, instance_id) != 0)
		return err_set(err, "the role session %s is not the instance %.128s the agent claims",
			       id->session, instance_id);
	/* UserId is "<role id>:<session>" for assumed roles. */
	const char *colon = strchr(id->user_id, ':');
	if (!colon || strcmp(colon + 1, id->session) != 0)
		return err_set(err, "UserId %.200s does not name the session %s", id->user_id,
			       id->session);
	return 0;
}

/* ---- checking a proof ---- */

static int host_equal(const char *a, const char *b)
{
	return strcasecmp(a, b) == 0;
}

static int hexdig(int c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Percent-decodes s[0..n) into out (cap); -1 on a bad escape, NUL or overflow. */
static int pct_decode(const char *s, size_t n, char *out, size_t cap)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (c == '%') {
			if (i + 2 >= n || !hexdig(s[i + 1]) || !hexdig(s[i + 2]))
				return -1;
			char h[3] = {s[i + 1], s[i + 2], 0};
			c = (char)strtol(h, NULL, 16);
			i += 2;
			if (c == '\0')
				return -1;
		}
		if (o + 1 >= cap)
			return -1;
		out[o++] = c;
	}
	out[o] = '\0';
	return 0;
}

static int64_t amz_date_ms(const char *s)
{
	/* 20150830T123600Z */
	if (strlen(s) != 16 || s[8] != 'T' || s[15] != 'Z')
		return -1;
	char rfc[21];
	snprintf(rfc, sizeof rfc, "%.4s-%.2s-%.2sT%.2s:%.2s:%.2sZ", s, s + 4, s + 6, s + 9, s + 11,
		 s + 13);
	for (int i = 0; i < 16; i++)
		if (i != 8 && i != 15 && (s[i] < '0' || s[i] > '9'))
			return -1;
	int64_t ms;
	return clock_parse_rfc3339(rfc, &ms) == 0 ? ms : -1;
}

struct qparam {
	const char *name;
	char value[STS_PROOF_URL_MAX];
	bool seen;
	bool required;
};

int sts_proof_check(const cJSON *proof, const char *endpoint, const char *server, int64_t now_ms,
		    struct sts_checked *out, struct err *err)
{
	memset(out, 0, sizeof *out);
	if (!cJSON_IsObject(proof))
		return err_set(err, "aws_identity: expected an object");
	const cJSON *jurl = cJSON_GetObjectItemCaseSensitive(proof, "url");
	const cJSON *jh = cJSON_GetObjectItemCaseSensitive(proof, "headers");
	for (const cJSON *k = proof->child; k; k = k->next)
		if (!k->string || (strcmp(k->string, "url") != 0 && strcmp(k->string, "headers") != 0))
			return err_set(err, "aws_identity: unknown field %.40s",
				       k->string ? k->string : "?");
	if (!cJSON_IsString(jurl) || !cJSON_IsObject(jh))
		return err_set(err, "aws_identity: url (a string) and headers (an object) are "
			       "required");
	const char *url = jurl->valuestring;
	size_t ulen = strlen(url);
	if (ulen == 0 || ulen > STS_PROOF_URL_MAX)
		return err_set(err, "aws_identity.url: 1..%d bytes", STS_PROOF_URL_MAX);

	/* The endpoint we trust: scheme://host, path "/". */
	char ehost[STS_HOST_MAX], epath[256];
	if (!endpoint || awsquery_split_endpoint(endpoint, ehost, sizeof ehost, epath, sizeof epath,
						 err) < 0)
		return err_prefix(err, "agents.sts_endpoint");
	size_t scheme_len = (size_t)(strstr(endpoint, "://") + 3 - endpoint);
	if (strncasecmp(url, endpoint, scheme_len) != 0)
		return err_set(err, "aws_identity.url: not the STS endpoint this coordinator trusts");
	const char *uhost = url + scheme_len;
	size_t hl = strcspn(uhost, "/?#");
	char host[STS_HOST_MAX];
	if (hl == 0 || hl >= sizeof host)
		return err_set(err, "aws_identity.url: no host");
	memcpy(host, uhost, hl);
	host[hl] = '\0';
	if (!host_equal(host, ehost))
		return err_set(err, "aws_identity.url: host %.100s is not the STS endpoint %s this "
			       "coordinator trusts", host, ehost);
	const char *rest = uhost + hl;
	if (strncmp(rest, "/?", 2) != 0 || strcmp(epath, "/") != 0)
		return err_set(err, "aws_identity.url: the path must be \"/\" with a query");
	const char *query = rest + 2;
	/* A canonical SigV4 query holds unreserved characters and escapes only. */
	for (const char *c = query; *c; c++) {
		unsigned char u = (unsigned char)*c;
		if (!(isalnum(u) || strchr("-._~%=&", u)))
			return err_set(err, "aws_identity.url: character 0x%02x in the query", u);
	}

	struct qparam qp[] = {
		{.name = "Action", .required = true},
		{.name = "Version", .required = true},
		{.name = "X-Amz-Algorithm", .required = true},
		{.name = "X-Amz-Credential", .required = true},
		{.name = "X-Amz-Date", .required = true},
		{.name = "X-Amz-Expires", .required = true},
		{.name = "X-Amz-SignedHeaders", .required = true},
		{.name = "X-Amz-Signature", .required = true},
		{.name = "X-Amz-Security-Token", .required = false},
	};
	enum { P_ACTION, P_VERSION, P_ALG, P_CRED, P_DATE, P_EXPIRES, P_SIGNED, P_SIG, P_TOKEN };
	size_t nq = sizeof qp / sizeof qp[0];
	const char *p = query;
	int count = 0;
	while (*p) {
		const char *amp = strchr(p, '&');
		size_t n = amp ? (size_t)(amp - p) : strlen(p);
		const char *eq = memchr(p, '=', n);
		if (!eq || eq == p)
			return err_set(err, "aws_identity.url: malformed query");
		if (++count > QUERY_PARAMS_MAX)
			return err_set(err, "aws_identity.url: too many query parameters");
		char name[64];
		if ((size_t)(eq - p) >= sizeof name ||
		    pct_decode(p, (size_t)(eq - p), name, sizeof name) < 0)
			return err_set(err, "aws_identity.url: bad query parameter name");
		size_t i;
		for (i = 0; i < nq; i++)
			if (strcmp(qp[i].name, name) == 0)
				break;
		if (i == nq)
			return err_set(err, "aws_identity.url: unexpected query parameter %s", name);
		if (qp[i].seen)
			return err_set(err, "aws_identity.url: %s given twice", name);
		qp[i].seen = true;
		if (pct_decode(eq + 1, n - (size_t)(eq + 1 - p), qp[i].value, sizeof qp[i].value) < 0)
			return err_set(err, "aws_identity.url: bad value of %s", name);
		p += n;
		if (*p == '&') {
			p++;
			if (!*p)
				return err_set(err, "aws_identity.url: malformed query");
		}
	}
	for (size_t i = 0; i < nq; i++)
		if (qp[i].required && !qp[i].seen)
			return err_set(err, "aws_identity.url: %s is missing", qp[i].name);
	if (strcmp(qp[P_ACTION].value, "GetCallerIdentity") != 0 ||
	    strcmp(qp[P_VERSION].value, STS_VERSION) != 0)
		return err_set(err, "aws_identity.url: only Action=GetCallerIdentity&Version="
			       STS_VERSION " is accepted");
	if (strcmp(qp[P_ALG].value, SIGV4_ALGORITHM) != 0)
		return err_set(err, "aws_identity.url: X-Amz-Algorithm must be " SIGV4_ALGORITHM);
	/* Credential: AKID/DATE/REGION/sts/aws4_request */
	const char *cred = qp[P_CRED].value;
	const char *parts[5];
	size_t pl[5];
	int np = 0;
	for (const char *c = cred; np < 5;) {
		const char *s = strchr(c, '/');
		parts[np] = c;
		pl[np++] = s ? (size_t)(s - c) : strlen(c);
		if (!s)
			break;
		c = s + 1;
	}
	if (np != 5 || strchr(parts[4], '/') || pl[3] != 3 || memcmp(parts[3], "sts", 3) != 0 ||
	    pl[4] != 12 || memcmp(parts[4], "aws4_request", 12) != 0 || pl[0] == 0 || pl[1] != 8)
		return err_set(err, "aws_identity.url: X-Amz-Credential is not scoped to sts");
	const char *date = qp[P_DATE].value;
	int64_t signed_ms = amz_date_ms(date);
	if (signed_ms < 0 || memcmp(date, parts[1], 8) != 0)
		return err_set(err, "aws_identity.url: bad X-Amz-Date");
	char *endp;
	long expires = strtol(qp[P_EXPIRES].value, &endp, 10);
	if (*endp || !qp[P_EXPIRES].value[0] || expires < 1 || expires > STS_EXPIRES_MAX_S)
		return err_set(err, "aws_identity.url: X-Amz-Expires must be 1..%d",
			       STS_EXPIRES_MAX_S);
	out->expires_ms = signed_ms + (int64_t)expires * 1000;
	if (now_ms > out->expires_ms)
		return err_set(err, "aws_identity: the presigned request expired");
	if (signed_ms > now_ms + SKEW_ALLOWED_MS)
		return err_set(err, "aws_identity: the presigned request is dated in the future");
	const char *sig = qp[P_SIG].value;
	if (strlen(sig) != 64)
		return err_set(err, "aws_identity.url: bad X-Amz-Signature");
	for (const char *c = sig; *c; c++)
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f')))
			return err_set(err, "aws_identity.url: bad X-Amz-Signature");
	memcpy(out->signature, sig, 65); /* 64 hex digits and the NUL, checked above */

	/* Signed headers: exactly the headers given, host and (when this
	 * coordinator has a name) the server header among them. */
	const char *signed_list = qp[P_SIGNED].value;
	int nh = 0;
	bool have_host = false, have_server = false, have_nonce = false;
	for (const cJSON *h = jh->child; h; h = h->next) {
		if (++nh > PROOF_HEADERS_MAX)
			return err_set(err, "aws_identity.headers: at most %d", PROOF_HEADERS_MAX);
		if (!h->string || !cJSON_IsString(h))
			return err_set(err, "aws_identity.headers: values must be strings");
		const char *v = h->valuestring;
		if (strlen(v) >= STS_HOST_MAX)
			return err_set(err, "aws_identity.headers.%.40s: too long", h->string);
		for (const char *c = v; *c; c++)
			if ((unsigned char)*c < 0x20 || (unsigned char)*c == 0x7f)
				return err_set(err, "aws_identity.headers.%.40s: control character",
					       h->string);
		char lower[64];
		size_t n = strlen(h->string);
		if (n == 0 || n >= sizeof lower)
			return err_set(err, "aws_identity.headers: bad name");
		for (size_t i = 0; i <= n; i++)
			lower[i] = (char)tolower((unsigned char)h->string[i]);
		/* the name must be in the signed list, as a whole entry */
		bool listed = false;
		for (const char *s = signed_list; *s;) {
			size_t l = strcspn(s, ";");
			if (l == n && memcmp(s, lower, n) == 0)
				listed = true;
			s += l;
			if (*s == ';')
				s++;
		}
		if (!listed)
			return err_set(err, "aws_identity.headers.%.40s is not signed", h->string);
		if (strcmp(lower, "host") == 0) {
			if (have_host)
				return err_set(err, "aws_identity.headers: Host given twice");
			have_host = true;
			if (!host_equal(v, ehost))
				return err_set(err, "aws_identity.headers.Host is not the STS endpoint");
			snprintf(out->host, sizeof out->host, "%s", v);
		} else if (strcasecmp(h->string, STS_SERVER_HEADER) == 0) {
			if (have_server)
				return err_set(err, "aws_identity.headers: " STS_SERVER_HEADER " twice");
			have_server = true;
			if (!server || strcmp(v, server) != 0)
				return err_set(err, "aws_identity: signed for coordinator %.100s, not "
					       "this one", v);
			snprintf(out->server, sizeof out->server, "%s", v);
		} else if (strcasecmp(h->string, STS_NONCE_HEADER) == 0) {
			if (have_nonce)
				return err_set(err, "aws_identity.headers: " STS_NONCE_HEADER " twice");
			have_nonce = true;
			size_t nl = strlen(v);
			if (nl < 16 || nl > 64)
				return err_set(err, "aws_identity.headers." STS_NONCE_HEADER ": 16..64 "
					       "characters");
			for (const char *c = v; *c; c++)
				if (!isalnum((unsigned char)*c))
					return err_set(err, "aws_identity.headers." STS_NONCE_HEADER
						       ": letters and digits only");
			memcpy(out->nonce, v, nl + 1); /* nl <= 64 < sizeof out->nonce */
		} else {
			return err_set(err, "aws_identity.headers.%.40s: not accepted", h->string);
		}
	}
	/* Every signed header was given (we send exactly those). */
	int nsigned = 1;
	for (const char *c = signed_list; *c; c++)
		nsigned += *c == ';';
	if (!have_host || nsigned != nh)
		return err_set(err, "aws_identity: the signed headers (%.100s) and the headers given "
			       "differ", signed_list);
	if (server && *server && !have_server)
		return err_set(err, "aws_identity: the proof must sign " STS_SERVER_HEADER);
	int w = snprintf(out->url, sizeof out->url, "%.*s%s/?%s", (int)scheme_len, endpoint, ehost,
			 query);
	if (w < 0 || (size_t)w >= sizeof out->url)
		return err_set(err, "aws_identity.url: too long");
	return 0;
}

/* ---- replay ---- */

struct replay_entry {
	struct replay_entry *next;
	int64_t expires_ms;
	char sig[65];
};

struct sts_replay {
	struct replay_entry *buckets[REPLAY_BUCKETS];
	size_t count, max;
};

struct sts_replay *sts_replay_new(size_t max)
{
	struct sts_replay *r = calloc(1, sizeof *r);
	if (r)
		r->max = max ? max : REPLAY_DEFAULT_MAX;
	return r;
}

void sts_replay_free(struct sts_replay *r)
{
	if (!r)
		return;
	for (size_t b = 0; b < REPLAY_BUCKETS; b++) {
		while (r->buckets[b]) {
			struct replay_entry *e = r->buckets[b];
			r->buckets[b] = e->next;
			free(e);
		}
	}
	free(r);
}

static size_t replay_bucket(const char *sig)
{
	uint32_t h = 2166136261u;
	for (const unsigned char *p = (const unsigned char *)sig; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % REPLAY_BUCKETS;
}

/* Drops expired entries of one bucket (all buckets when b is REPLAY_BUCKETS). */
static void replay_purge(struct sts_replay *r, size_t b, int64_t now_ms)
{
	size_t from = b == REPLAY_BUCKETS ? 0 : b, to = b == REPLAY_BUCKETS ? REPLAY_BUCKETS : b + 1;
	for (size_t i = from; i < to; i++) {
		struct replay_entry **pp = &r->buckets[i];
		while (*pp) {
			struct replay_entry *e = *pp;
			if (e->expires_ms < now_ms) {
				*pp = e->next;
				free(e);
				r->count--;
			} else {
				pp = &e->next;
			}
		}
	}
}

int sts_replay_use(struct sts_replay *r, const char *signature, int64_t expires_ms,
		   int64_t now_ms)
{
	if (!r || !signature || strlen(signature) >= sizeof ((struct replay_entry *)0)->sig)
		return -1;
	size_t b = replay_bucket(signature);
	replay_purge(r, b, now_ms);
	for (struct replay_entry *e = r->buckets[b]; e; e = e->next)
		if (strcmp(e->sig, signature) == 0)
			return -1;
	if (r->count >= r->max) {
		replay_purge(r, REPLAY_BUCKETS, now_ms);
		if (r->count >= r->max)
			return -1; /* refuse rather than forget a live proof */
	}
	struct replay_entry *e = calloc(1, sizeof *e);
	if (!e)
		return -1;
	snprintf(e->sig, sizeof e->sig, "%s", signature);
	/* A little past the expiry: our clock and STS's may differ. */
	e->expires_ms = expires_ms + SKEW_ALLOWED_MS;
	e->next = r->buckets[b];
	r->buckets[b] = e;
	r->count++;
	return 0;
}

size_t sts_replay_count(const struct sts_replay *r)
{
	return r ? r->count : 0;
}

/* ---- the verifier ---- */

struct vcall {
	struct sts_verifier *v;
	struct vcall *prev, *next;
	uint64_t id;
	uint64_t http_id;
	char instance_id[130];
	sts_verify_fn done;
	void *arg;
};

struct sts_verifier {
	struct http_client *http;
	char *endpoint;
	char *ca_file;
	char *server;
	char *accounts;
	char *roles;
	int64_t timeout_ms;
	struct backoff_policy retry;
	struct sts_replay *replay;
	struct vcall *calls;
	uint64_t next_id;
};

static void vcall_free(struct vcall *c)
{
	struct sts_verifier *v = c->v;
	if (c->http_id)
		http_client_cancel(v->http, c->http_id);
	if (c->prev)
		c->prev->next = c->next;
	else
		v->calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
}

static int should_retry(const struct http_response *resp, void *arg)
{
	(void)arg;
	if (http_default_should_retry(resp))
		return 1;
	if (resp->error != HTTP_OK || resp->status != 400)
		return 0;
	char code[64], msg[8];
	awsquery_parse_error(resp->body, resp->body_len, code, sizeof code, msg, sizeof msg);
	return awsquery_classify(resp->status, code, "") == AWSQUERY_CLASS_THROTTLE;
}

static void on_sts(const struct http_response *resp, void *arg)
{
	struct vcall *c = arg;
	struct sts_verifier *v = c->v;
	c->http_id = 0;
	sts_verify_fn done = c->done;
	void *darg = c->arg;
	char instance[sizeof c->instance_id];
	snprintf(instance, sizeof instance, "%s", c->instance_id);
	vcall_free(c);
	char reason[600];
	if (resp->error != HTTP_OK) {
		snprintf(reason, sizeof reason, "STS unreachable: %s %s", http_error_name(resp->error),
			 resp->error_msg);
		done(STS_UNAVAILABLE, NULL, reason, darg);
		return;
	}
	if (resp->status != 200) {
		char code[128], msg[400];
		awsquery_parse_error(resp->body, resp->body_len, code, sizeof code, msg, sizeof msg);
		enum awsquery_error_class cls = awsquery_classify(resp->status, code, msg);
		snprintf(reason, sizeof reason, "STS answered %ld %s: %s", resp->status,
			 code[0] ? code : "(no code)", msg);
		/* Throttling and 5xx after the retries: STS's trouble, not the proof's. */
		done(cls == AWSQUERY_CLASS_THROTTLE || cls == AWSQUERY_CLASS_RETRY ? STS_UNAVAILABLE
										  : STS_REFUSED,
		     NULL, reason, darg);
		return;
	}
	struct sts_identity id;
	struct err err = {{0}};
	if (sts_parse_identity(resp->body, resp->body_len, &id, &err) < 0) {
		snprintf(reason, sizeof reason, "%s", err.msg);
		done(STS_REFUSED, NULL, reason, darg);
		return;
	}
	if (sts_identity_allowed(&id, v->accounts, v->roles, instance, &err) < 0) {
		snprintf(reason, sizeof reason, "%s", err.msg);
		done(STS_REFUSED, &id, reason, darg);
		return;
	}
	done(STS_VERIFIED, &id, "", darg);
}

struct sts_verifier *sts_verifier_new(struct http_client *http,
				      const struct sts_verifier_opts *o, struct err *err)
{
	char host[STS_HOST_MAX], path[256];
	if (!http || !o || !o->endpoint) {
		err_set(err, "sts: an http client and an endpoint are required");
		return NULL;
	}
	if (awsquery_split_endpoint(o->endpoint, host, sizeof host, path, sizeof path, err) < 0) {
		err_prefix(err, "sts");
		return NULL;
	}
	if (strcmp(path, "/") != 0) {
		err_set(err, "sts: endpoint \"%s\" must have no path", o->endpoint);
		return NULL;
	}
	struct sts_verifier *v = calloc(1, sizeof *v);
	if (!v) {
		err_set(err, "sts: out of memory");
		return NULL;
	}
	v->http = http;
	v->endpoint = strdup(o->endpoint);
	v->ca_file = o->ca_file ? strdup(o->ca_file) : NULL;
	v->server = o->server && *o->server ? strdup(o->server) : NULL;
	v->accounts = strdup(o->accounts ? o->accounts : "");
	v->roles = strdup(o->roles ? o->roles : "");
	v->timeout_ms = o->timeout_ms > 0 ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	v->retry.base_ms = 200;
	v->retry.cap_ms = 2000;
	v->retry.max_attempts = o->max_attempts > 0 ? o->max_attempts : DEFAULT_ATTEMPTS;
	v->replay = sts_replay_new(0);
	v->next_id = 1;
	if (!v->endpoint || (o->ca_file && !v->ca_file) || (o->server && *o->server && !v->server) ||
	    !v->accounts || !v->roles || !v->replay) {
		sts_verifier_free(v);
		err_set(err, "sts: out of memory");
		return NULL;
	}
	return v;
}

void sts_verifier_free(struct sts_verifier *v)
{
	if (!v)
		return;
	while (v->calls)
		vcall_free(v->calls);
	sts_replay_free(v->replay);
	free(v->endpoint);
	free(v->ca_file);
	free(v->server);
	free(v->accounts);
	free(v->roles);
	free(v);
}

uint64_t sts_verifier_start(struct sts_verifier *v, const cJSON *proof, const char *instance_id,
			    sts_verify_fn done, void *arg, struct err *err)
{
	if (!v || !done || !instance_id || strlen(instance_id) >= sizeof ((struct vcall *)0)->instance_id) {
		err_set(err, "sts: bad arguments");
		return 0;
	}
	struct sts_checked *chk = malloc(sizeof *chk);
	if (!chk) {
		err_set(err, "sts: out of memory");
		return 0;
	}
	int64_t now = clock_wall_ms();
	if (sts_proof_check(proof, v->endpoint, v->server, now, chk, err) < 0) {
		free(chk);
		return 0;
	}
	if (sts_replay_use(v->replay, chk->signature, chk->expires_ms, now) < 0) {
		free(chk);
		err_set(err, "aws_identity: this presigned request was used before");
		return 0;
	}
	struct vcall *c = calloc(1, sizeof *c);
	if (!c) {
		free(chk);
		err_set(err, "sts: out of memory");
		return 0;
	}
	char hhost[STS_HOST_MAX + 8], hserver[STS_HOST_MAX + 32], hnonce[100];
	snprintf(hhost, sizeof hhost, "Host: %s", chk->host);
	snprintf(hserver, sizeof hserver, STS_SERVER_HEADER ": %s", chk->server);
	snprintf(hnonce, sizeof hnonce, STS_NONCE_HEADER ": %s", chk->nonce);
	/* Exactly the signed headers (no others of the agent's choosing). */
	const char *headers[5] = {hhost, "Accept: text/xml"};
	size_t nh = 2;
	if (chk->server[0])
		headers[nh++] = hserver;
	if (chk->nonce[0])
		headers[nh++] = hnonce;
	headers[nh] = NULL;
	c->v = v;
	c->id = v->next_id++;
	snprintf(c->instance_id, sizeof c->instance_id, "%s", instance_id);
	c->done = done;
	c->arg = arg;
	struct http_request req = {
		.method = "GET",
		.url = chk->url,
		.headers = headers,
		.timeout_ms = v->timeout_ms,
		.max_body = AWSQUERY_XML_MAX,
		.ca_file = v->ca_file,
		.retry = &v->retry,
		.should_retry = should_retry,
		.on_done = on_sts,
		.arg = c,
	};
	c->http_id = http_client_start(v->http, &req);
	memset(chk, 0, sizeof *chk); /* the URL carries a session token */
	free(chk);
	if (!c->http_id) {
		free(c);
		err_set(err, "sts: could not start the request");
		return 0;
	}
	c->next = v->calls;
	if (v->calls)
		v->calls->prev = c;
	v->calls = c;
	return c->id;
}

void sts_verifier_cancel(struct sts_verifier *v, uint64_t id)
{
	if (!v || !id)
		return;
	for (struct vcall *c = v->calls; c; c = c->next) {
		if (c->id == id) {
			vcall_free(c);
			return;
		}
	}
}
