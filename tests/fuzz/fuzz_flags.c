/* fuzz_flags.c — libFuzzer harness: flagset_parse, then format and parse
 * again (the round trip must be stable), flagset_add_len and
 * flag_keyword_valid on the raw bytes. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "flags.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	memcpy(s, data, size);
	s[size] = '\0';
	struct flagset a = FLAGSET_INIT, b = FLAGSET_INIT, c = FLAGSET_INIT;
	if (flagset_parse(&a, s) == 0) {
		char *t = flagset_format(&a);
		if (flagset_parse(&b, t) != 0 || !flagset_equal(&a, &b))
			abort(); /* what we write we must read back the same */
		free(t);
	}
	(void)flag_keyword_valid((const char *)data, size);
	(void)flagset_add_len(&c, (const char *)data, size);
	flagset_minus(&b, &a, &c);
	flagset_clear(&a);
	flagset_clear(&b);
	flagset_clear(&c);
	free(s);
	return 0;
}
