// The operator functions this extension registers. They are implemented
// once for all backends in causal_conv1d/ops.cpp.
#pragma once

#include "../causal_conv1d/ops.h"
