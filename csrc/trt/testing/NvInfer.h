// TEST STAND-IN — see NvInferRuntime.h in this folder.
#pragma once
#include "NvInferRuntime.h"
