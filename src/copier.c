/* copier.c — being written. */
#include "util.h"
