/* url.c — being written. */
#include "util.h"
