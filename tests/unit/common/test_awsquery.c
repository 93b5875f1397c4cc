/*
 * awsquery: the strict XML reader (paths, entities, namespaces, and the
 * documents it must refuse: DTDs, CDATA, duplicates, bad nesting, control
 * bytes, invalid UTF-8, depth), the error document of STS/Auto Scaling and
 * of EC2, the error classes, and form bodies. The signed client is tested
 * against tests/fakes/autoscaling.py in test_autoscaling.c.
 *
 * The reader is libexpat with refusing handlers: syntax errors carry expat's
 * own wording ("mismatched tag", "not well-formed (invalid token)") with a
 * line and column; the refusals of our own (DTD, CDATA, processing
 * instructions, duplicates, depth, control bytes, UTF-8) keep ours.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "awsquery.h"

#define LEN(s) (sizeof(s) - 1)

/* The answer documented in the AWS STS API Reference, GetCallerIdentity,
 * "Example 2" (a caller using an assumed role). */
static const char sts_answer[] =
	"<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n"
	"  <GetCallerIdentityResult>\n"
	"  <Arn>arn:aws:sts::123456789012:assumed-role/my-role-name/my-role-session-name</Arn>\n"
	"    <UserId>AKIAI44QH8DHBEXAMPLE:my-role-session-name</UserId>\n"
	"    <Account>123456789012</Account>\n"
	"  </GetCallerIdentityResult>\n"
	"  <ResponseMetadata>\n"
	"    <RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId>\n"
	"  </ResponseMetadata>\n"
	"</GetCallerIdentityResponse>\n";

static void test_xml_paths(void **state)
{
	(void)state;
	char out[256];
	struct err err;
	assert_int_equal(awsquery_xml_text(sts_answer, LEN(sts_answer),
					   "GetCallerIdentityResponse/GetCallerIdentityResult/Account",
					   out, sizeof out, &err),
			 1);
	assert_string_equal(out, "123456789012");
	assert_int_equal(awsquery_xml_text(sts_answer, LEN(sts_answer),
					   "GetCallerIdentityResponse/ResponseMetadata/RequestId", out,
					   sizeof out, &err),
			 1);
	assert_string_equal(out, "01234567-89ab-cdef-0123-456789abcdef");
	/* Absent: 0 and "". A partial path is not a match. */
	assert_int_equal(awsquery_xml_text(sts_answer, LEN(sts_answer),
					   "GetCallerIdentityResponse/GetCallerIdentityResult/Nope",
					   out, sizeof out, &err),
			 0);
	assert_string_equal(out, "");
	assert_int_equal(awsquery_xml_text(sts_answer, LEN(sts_answer), "Account", out, sizeof out,
					   &err),
			 0);
	/* A non-leaf is refused rather than flattened. */
	assert_int_equal(awsquery_xml_text(sts_answer, LEN(sts_answer),
					   "GetCallerIdentityResponse/GetCallerIdentityResult", out,
					   sizeof out, &err),
			 -1);
	assert_non_null(strstr(err.msg, "child elements"));
	char root[64];
	assert_int_equal(awsquery_xml_root(sts_answer, LEN(sts_answer), root, sizeof root, &err), 1);
	assert_string_equal(root, "GetCallerIdentityResponse");
}

static void test_xml_text_rules(void **state)
{
	(void)state;
	char out[64];
	struct err err;
	/* Prolog, BOM, comments, attributes, namespace prefixes, entities. */
	const char d1[] = "\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- hi -->"
			  "<a:R xmlns:a='x' k=\"v\"><a:B>x &lt;&amp;&gt; &quot;&apos; &#65;&#x42;"
			  "&#x20AC;</a:B><!-- c --><E/></a:R>\n<!-- tail -->";
	assert_int_equal(awsquery_xml_text(d1, LEN(d1), "R/B", out, sizeof out, &err), 1);
	assert_string_equal(out, "x <&> \"' AB\xE2\x82\xAC");
	assert_int_equal(awsquery_xml_text(d1, LEN(d1), "R/E", out, sizeof out, &err), 1);
	assert_string_equal(out, "");
	/* Too long for the caller's buffer: an error, not a cut value. */
	const char d2[] = "<R><B>0123456789</B></R>";
	assert_int_equal(awsquery_xml_text(d2, LEN(d2), "R/B", out, 8, &err), -1);
	assert_non_null(strstr(err.msg, "longer"));
	assert_string_equal(out, "");
}

static void refused(const char *doc, size_t len, const char *why)
{
	char out[64];
	struct err err = {{0}};
	int rc = awsquery_xml_text(doc, len, "R/B", out, sizeof out, &err);
	if (rc != -1)
		fail_msg("accepted (%d, \"%s\"): %.*s", rc, out, (int)len, doc);
	if (why && !strstr(err.msg, why))
		fail_msg("error \"%s\" lacks \"%s\"", err.msg, why);
}

static void test_xml_refusals(void **state)
{
	(void)state;
#define REFUSED(s, why) refused(s, LEN(s), why)
	REFUSED("<!DOCTYPE R [<!ENTITY x \"y\">]><R><B>&x;</B></R>", "DTD");
	REFUSED("<R><B><![CDATA[x]]></B></R>", "CDATA");
	REFUSED("<R><?pi x?><B>x</B></R>", "processing");
	REFUSED("<R><B>a</B><B>b</B></R>", "more than once");
	REFUSED("<R><B/><B>b</B></R>", "more than once");
	REFUSED("<R><B>x</C></R>", "mismatched tag");
	REFUSED("<R><B>x</B>", "no element found");
	REFUSED("<R><B>x</B></R><R/>", "junk after document element");
	REFUSED("junk<R><B>x</B></R>", "not well-formed");
	REFUSED("<R><B>&unknown;</B></R>", "undefined entity");
	REFUSED("<R><B>&#0;</B></R>", "invalid character number");
	REFUSED("<R><B>&#xD800;</B></R>", "invalid character number");
	REFUSED("<R><B>&#x110000;</B></R>", "invalid character number");
	REFUSED("<R><B>a & b</B></R>", NULL);
	REFUSED("<R><B>\x01</B></R>", "control");
	REFUSED("<R><B>\xC3\x28</B></R>", "UTF-8");
	REFUSED("<R><B k=v>x</B></R>", "not well-formed");
	REFUSED("<R><B k=\"a<b\">x</B></R>", "not well-formed");
	REFUSED("<R><B k=\"1\"j=\"2\">x</B></R>", "not well-formed");
	REFUSED("<R><1B>x</1B></R>", "not well-formed");
	REFUSED("", "empty");
	refused("<R><B>x\0</B></R>", 13, "NUL");
#undef REFUSED
	/* Depth: AWSQUERY_XML_DEPTH levels are fine, one more is not. */
	char deep[1024] = "";
	for (int i = 0; i < AWSQUERY_XML_DEPTH + 1; i++)
		strcat(deep, "<a>");
	for (int i = 0; i < AWSQUERY_XML_DEPTH + 1; i++)
		strcat(deep, "</a>");
	char root[16];
	struct err err;
	assert_int_equal(awsquery_xml_root(deep, strlen(deep), root, sizeof root, &err), -1);
	assert_non_null(strstr(err.msg, "deeper"));
	deep[0] = '\0';
	for (int i = 0; i < AWSQUERY_XML_DEPTH; i++)
		strcat(deep, "<a>");
	for (int i = 0; i < AWSQUERY_XML_DEPTH; i++)
		strcat(deep, "</a>");
	assert_int_equal(awsquery_xml_root(deep, strlen(deep), root, sizeof root, &err), 1);
	/* The size cap. */
	size_t big = AWSQUERY_XML_MAX + 1;
	char *b = malloc(big);
	memset(b, ' ', big);
	memcpy(b, "<R>", 3);
	memcpy(b + big - 4, "</R>", 4);
	assert_int_equal(awsquery_xml_root(b, big, root, sizeof root, &err), -1);
	assert_non_null(strstr(err.msg, "larger"));
	free(b);
}

static void test_error_documents(void **state)
{
	(void)state;
	char code[64], msg[256];
	/* As Auto Scaling answers a call for an instance with no action in progress. */
	const char e1[] = "<ErrorResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">"
			  "<Error><Type>Sender</Type><Code>ValidationError</Code><Message>No active "
			  "Lifecycle Action found with instance ID i-0123</Message></Error>"
			  "<RequestId>r</RequestId></ErrorResponse>";
	awsquery_parse_error(e1, LEN(e1), code, sizeof code, msg, sizeof msg);
	assert_string_equal(code, "ValidationError");
	assert_string_equal(msg, "No active Lifecycle Action found with instance ID i-0123");
	/* EC2's shape. */
	const char e2[] = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>"
			  "Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID>"
			  "</Response>";
	awsquery_parse_error(e2, LEN(e2), code, sizeof code, msg, sizeof msg);
	assert_string_equal(code, "RequestLimitExceeded");
	/* Not XML: the start of the page, printable. */
	awsquery_parse_error("<html>502\x01</html>", 17, code, sizeof code, msg, sizeof msg);
	assert_string_equal(code, "");
	assert_string_equal(msg, "<html>502 </html>");

	assert_int_equal(awsquery_classify(400, "Throttling", ""), AWSQUERY_CLASS_THROTTLE);
	assert_int_equal(awsquery_classify(429, "", ""), AWSQUERY_CLASS_THROTTLE);
	assert_int_equal(awsquery_classify(500, "InternalFailure", ""), AWSQUERY_CLASS_RETRY);
	assert_int_equal(awsquery_classify(500, "ResourceContention", ""), AWSQUERY_CLASS_RETRY);
	assert_int_equal(awsquery_classify(503, "", ""), AWSQUERY_CLASS_RETRY);
	assert_int_equal(awsquery_classify(403, "ExpiredToken", ""), AWSQUERY_CLASS_CREDENTIALS);
	assert_int_equal(awsquery_classify(403, "InvalidClientTokenId", ""),
			 AWSQUERY_CLASS_CREDENTIALS);
	/* A skew message wins over the code it comes with. */
	assert_int_equal(awsquery_classify(403, "SignatureDoesNotMatch",
					   "Signature expired: 20300101T000000Z is now earlier than"),
			 AWSQUERY_CLASS_SKEW);
	assert_int_equal(awsquery_classify(403, "SignatureDoesNotMatch", "calculated"),
			 AWSQUERY_CLASS_CREDENTIALS);
	assert_int_equal(awsquery_classify(400, "ValidationError", ""), AWSQUERY_CLASS_FINAL);
	assert_int_equal(awsquery_classify(403, "AccessDenied", ""), AWSQUERY_CLASS_FINAL);
}

static void test_form(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 0);
	struct awsquery_param p[] = {{"AutoScalingGroupName", "my group/ü"},
				     {"LifecycleHookName", "a+b=c&d"}};
	assert_int_equal(awsquery_form(&b, "CompleteLifecycleAction", "2011-01-01", p, 2), 0);
	assert_string_equal(b.data, "Action=CompleteLifecycleAction&Version=2011-01-01&"
				    "AutoScalingGroupName=my%20group%2F%C3%BC&"
				    "LifecycleHookName=a%2Bb%3Dc%26d");
	buf_free(&b);
	/* A cap too small leaves the buffer as it was. */
	buf_init(&b, 40);
	buf_append_str(&b, "keep");
	assert_int_equal(awsquery_form(&b, "CompleteLifecycleAction", "2011-01-01", p, 2), -1);
	assert_string_equal(b.data, "keep");
	buf_free(&b);

	char host[64], path[64];
	struct err err;
	assert_int_equal(awsquery_split_endpoint("http://127.0.0.1:8123", host, sizeof host, path,
						 sizeof path, &err),
			 0);
	assert_string_equal(host, "127.0.0.1:8123");
	assert_string_equal(path, "/");
	assert_int_equal(awsquery_split_endpoint("https://sts.eu-west-1.amazonaws.com/x/", host,
						 sizeof host, path, sizeof path, &err),
			 0);
	assert_string_equal(path, "/x/");
	assert_int_equal(awsquery_split_endpoint("ftp://x", host, sizeof host, path, sizeof path,
						 &err),
			 -1);
	assert_int_equal(awsquery_split_endpoint("https://u:p@x/", host, sizeof host, path,
						 sizeof path, &err),
			 -1);
	assert_int_equal(awsquery_split_endpoint("https://x/?a=b", host, sizeof host, path,
						 sizeof path, &err),
			 -1);
}

/* What changed with expat: documents the old reader took and expat refuses
 * (or reads differently), the DTD attacks, and where an error is. */
static void test_xml_expat(void **state)
{
	(void)state;
	char out[64];
	struct err err;
#define REFUSED(s, why) refused(s, LEN(s), why)
	/* Entity attacks never get past the DOCTYPE: billion laughs (from the
	 * well-known example), an external entity (XXE), an external DTD. */
	REFUSED("<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">"
		"<!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">"
		"<!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">]>"
		"<R><B>&lol3;</B></R>",
		"DTD");
	REFUSED("<!DOCTYPE R [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><R><B>&x;</B></R>", "DTD");
	REFUSED("<!DOCTYPE R SYSTEM \"http://127.0.0.1:1/r.dtd\"><R><B>x</B></R>", "DTD");
	REFUSED("<!DOCTYPE R><R><B>x</B></R>", "DTD");
	/* XML 1.0 rules the old reader did not check. */
	REFUSED("<R><B k=\"1\" k=\"2\">x</B></R>", "duplicate attribute");
	REFUSED("<R><B>a]]>b</B></R>", "not well-formed");
	REFUSED(" <?xml version=\"1.0\"?><R><B>x</B></R>", "declaration not at start");
	REFUSED("<R><B>\xEF\xBF\xBE</B></R>", "not well-formed"); /* U+FFFE */
	REFUSED("<R><B:>x</B:></R>", "ends with ':'");
	/* A document that says it is not UTF-8 is refused, not transcoded. */
	REFUSED("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><R><B>x</B></R>", "encoding");
	REFUSED("<?xml version=\"1.0\" encoding=\"UTF-16\"?><R><B>x</B></R>", "encoding");
	const char u8[] = "<?xml version=\"1.0\" encoding=\"utf-8\"?><R><B>\xC3\xA9</B></R>";
	assert_int_equal(awsquery_xml_text(u8, LEN(u8), "R/B", out, sizeof out, &err), 1);
	assert_string_equal(out, "\xC3\xA9");
	/* Names up to AWSQUERY_NAME_MAX bytes. */
	char longname[600];
	snprintf(longname, sizeof longname, "<R><%0*d/></R>", AWSQUERY_NAME_MAX + 1, 0);
	longname[4] = 'n';
	refused(longname, strlen(longname), "longer than");
	/* Line ends in text come back as "\n" (XML 1.0, 2.11). */
	const char crlf[] = "<R><B>a\r\nb\rc</B></R>";
	assert_int_equal(awsquery_xml_text(crlf, LEN(crlf), "R/B", out, sizeof out, &err), 1);
	assert_string_equal(out, "a\nb\nc");
	/* A character reference beyond the BMP, and references in attributes. */
	const char astral[] = "<R a=\"&#38;&lt;\"><B>&#x1F600;&#97;</B></R>";
	assert_int_equal(awsquery_xml_text(astral, LEN(astral), "R/B", out, sizeof out, &err), 1);
	assert_string_equal(out, "\xF0\x9F\x98\x80" "a");
	/* Entities decode once: "&amp;lt;" is the text "&lt;". */
	const char twice[] = "<R><B>&amp;lt;</B></R>";
	assert_int_equal(awsquery_xml_text(twice, LEN(twice), "R/B", out, sizeof out, &err), 1);
	assert_string_equal(out, "&lt;");
	/* A refusal after the element was read clears what was read. */
	const char late[] = "<R><B>x</B><![CDATA[y]]></R>";
	strcpy(out, "stale");
	assert_int_equal(awsquery_xml_text(late, LEN(late), "R/B", out, sizeof out, &err), -1);
	assert_string_equal(out, "");
	assert_non_null(strstr(err.msg, "CDATA"));
	/* Expat's errors say where. */
	const char where[] = "<R>\n  <B>x</C></R>";
	assert_int_equal(awsquery_xml_text(where, LEN(where), "R/B", out, sizeof out, &err), -1);
	assert_non_null(strstr(err.msg, "mismatched tag at line 2, column"));
	/* Text split around comments and entities is one value. */
	const char split[] = "<R><B>a<!-- c -->b&amp;c</B></R>";
	assert_int_equal(awsquery_xml_text(split, LEN(split), "R/B", out, sizeof out, &err), 1);
	assert_string_equal(out, "ab&c");
	/* err may be NULL. */
	assert_int_equal(awsquery_xml_text(late, LEN(late), "R/B", out, sizeof out, NULL), -1);
	assert_int_equal(awsquery_xml_root("<R", 2, out, sizeof out, NULL), -1);
#undef REFUSED
	/* An error document with a DTD is not read as one. */
	char code[64], msg[256];
	const char dtd[] = "<!DOCTYPE ErrorResponse [<!ENTITY c \"AccessDenied\">]><ErrorResponse>"
			   "<Error><Code>&c;</Code></Error></ErrorResponse>";
	awsquery_parse_error(dtd, LEN(dtd), code, sizeof code, msg, sizeof msg);
	assert_string_equal(code, "");
	assert_memory_equal(msg, "<!DOCTYPE ErrorResponse", 23);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_xml_paths),
		cmocka_unit_test(test_xml_text_rules),
		cmocka_unit_test(test_xml_refusals),
		cmocka_unit_test(test_xml_expat),
		cmocka_unit_test(test_error_documents),
		cmocka_unit_test(test_form),
	};
	return cmocka_run_group_tests_name("awsquery", tests, NULL, NULL);
}
