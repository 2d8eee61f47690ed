/* fuzz_mutf7.c — libFuzzer harness: modified UTF-7 both ways. Whatever
 * encodes must decode back to the input; whatever decodes must encode to a
 * form that decodes to the same text (the decoder accepts some
 * non-canonical forms, such as two adjacent shifts "&8Ok-&8Ok-", which the
 * encoder writes as one: that is allowed, losing text is not). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mutf7.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	memcpy(s, data, size);
	s[size] = '\0';
	char *d = mutf7_decode(s);
	if (d) {
		char *e = mutf7_encode(d);
		char *d2 = e ? mutf7_decode(e) : NULL;
		if (!d2 || strcmp(d2, d) != 0)
			abort(); /* decoded text does not survive a round trip */
		free(d2);
		free(e);
		free(d);
	}
	char *e = mutf7_encode(s);
	if (e) {
		char *back = mutf7_decode(e);
		if (!back || strcmp(back, s) != 0)
			abort(); /* encoding lost information */
		free(back);
		free(e);
	}
	free(s);
	return 0;
}
