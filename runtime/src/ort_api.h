// onnxruntime C++ API, initialised manually: the library is loaded by onnxruntime itself and must not
// link against libonnxruntime (see runtime/third_party/onnxruntime/README.md).
#pragma once

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT
