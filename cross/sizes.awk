# cross/sizes.awk: the bytes each library contributes to the loaded, file-backed
# output sections of a GNU ld map (-Wl,-Map); sections the linker dropped
# (--gc-sections) are listed before the memory map and not counted.
# Output: NAME<TAB>BYTES. cross/build.sh prints what the static agent is made of.
function component(f) {
	if (f ~ /libcurl\.a\(/) return "libcurl"
	if (f ~ /libmbedtls\.a\(/) return "mbedTLS (libmbedtls)"
	if (f ~ /libmbedx509\.a\(/) return "mbedTLS (libmbedx509)"
	if (f ~ /libmbedcrypto\.a\(/) return "mbedTLS (libmbedcrypto)"
	if (f ~ /libz\.a\(/) return "zlib"
	if (f ~ /libcjson\.a\(/) return "cJSON"
	if (f ~ /libev\.a\(/) return "libev"
	if (f ~ /libhttp_parser\.a\(/) return "http-parser"
	if (f ~ /libexpat\.a\(/) return "expat"
	if (f ~ /\/libgcc(_eh)?\.a\(/ || f ~ /\/crt(begin|end)[^\/]*\.o$/) return "libgcc"
	if (f ~ /\/lib(c|pthread|m)\.a\(/ || f ~ /\/(S?crt1|crti|crtn|rcrt1)\.o$/) return "musl libc"
	if (f ~ /\/libagent\.a\(/ || f ~ /\/agent\/main\.o$/) return "agent/*.c"
	if (f ~ /\/libcommon\.a\(/) return "common/*.c"
	return "other"
}
function hex(s,   i, n) {
	n = 0
	s = tolower(substr(s, 3))
	for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
	return n
}
function add(sz, f) { if (out !~ skip) bytes[component(f)] += hex(sz) }
BEGIN { skip = "^\\.(bss|tbss|comment|debug|note|stab|gnu_debug|gnu\\.attributes)" }
/^Linker script and memory map/ { on = 1; next }
!on { next }
/^\.[^ ]/ { out = $1; pending = ""; next }
/^ \.[^ ]+$/ { pending = $1; next }
pending != "" && $1 ~ /^0x/ && NF >= 3 { add($2, $3); pending = ""; next }
/^ [.A-Za-z_][^ ]* +0x/ && NF >= 4 { add($3, $4); next }
END { for (c in bytes) if (bytes[c] > 0) printf "%s\t%d\n", c, bytes[c] }
