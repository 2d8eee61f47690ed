/* fuzz_url.c — libFuzzer harness: url_parse on arbitrary text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "url.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	memcpy(s, data, size);
	s[size] = '\0';
	struct account_url u;
	memset(&u, 0, sizeof u);
	char *err = NULL;
	if (url_parse(s, &u, &err) == 0)
		url_free(&u);
	free(err);
	free(s);
	return 0;
}
