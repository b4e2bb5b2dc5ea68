"""Low-bit training: BitNet (1.58-bit ternary and 1-bit binary) layers, conversion and packed export."""

from .bitnet import (BitLinear, bit_layers, convert_to_bitnet, phase_in_lambda, quantization_regularizer,
                     quantize_activation, quantize_weight, set_phase_in, ternary_sparsity)
from .callback import BitNetCallback
from .export import ExportSizes, export_bitnet, load_bitnet, pack_binary, pack_ternary, unpack_binary, unpack_ternary

__all__ = ["BitLinear", "convert_to_bitnet", "bit_layers", "quantize_weight", "quantize_activation", "set_phase_in",
           "phase_in_lambda", "quantization_regularizer", "ternary_sparsity", "BitNetCallback", "export_bitnet",
           "load_bitnet", "ExportSizes", "pack_ternary", "unpack_ternary", "pack_binary", "unpack_binary"]
