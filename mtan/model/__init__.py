"""The network: SegNet-MTAN and what it is built from.

==============  ======================================================================
module          job
==============  ======================================================================
``network``     :class:`MTAN`: the whole network, its configs, saving and loading
``face``        :class:`TaskNetwork`: tasks by name, config, input check, ``predict`` (shared
                with the inference copy)
``blocks``      convolution layers, attention masks, heads, encoder and decoder stages
``batched``     every task's attention branch run in one batched call
``geometry``    inputs of any size: pad to multiples of 32, crop outputs back, mirror average
``storage``     ``config.json`` and safetensors weights read with checked errors
``widen``       a trained network grown into a wider one that computes the same function
==============  ======================================================================
"""
from mtan.model.files import CONFIG_NAME, WEIGHTS_NAME, ModelConfigError
from mtan.model.blocks import (ARCHITECTURES, BASE_WIDTHS, MULTIPLE, NUM_STAGES, AttentionMask, ConvBNReLU, Head,
                               stage_widths)
from mtan.model.geometry import crop, flip_average, pad, padded_forward, padded_size
from mtan.model.network import MTAN
from mtan.model.storage import count_parameters, load_safetensors_strict, read_config
from mtan.model.widen import WidenError, load_into, widened_state

__all__ = ["ARCHITECTURES", "BASE_WIDTHS", "CONFIG_NAME", "MTAN", "MULTIPLE", "NUM_STAGES", "WEIGHTS_NAME",
           "AttentionMask", "ConvBNReLU", "Head", "ModelConfigError", "count_parameters", "crop", "flip_average",
           "load_safetensors_strict", "pad", "padded_forward", "padded_size", "read_config", "stage_widths", "WidenError",
           "load_into", "widened_state"]
