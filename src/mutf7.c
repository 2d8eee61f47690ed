/* mutf7.c — being written. */
#include "util.h"
