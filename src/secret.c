/* secret.c — being written. */
#include "util.h"
