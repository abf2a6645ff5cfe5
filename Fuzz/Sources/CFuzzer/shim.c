// The target only carries CFuzzer.h; SwiftPM wants at least one C source in a C target.
#include "CFuzzer.h"
