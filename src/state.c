/* state.c — being written. */
#include "util.h"
