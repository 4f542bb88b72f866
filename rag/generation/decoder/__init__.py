"""The ONNX Runtime decoder engine: the one entry point the backends (rag.generation.local), RAFT and the
benchmarks use to write an answer's tokens with ONNX Runtime.

Its modules, one concept each:

* `onnx` - `OnnxDecoder`, a drop-in `generate` for a transformers model (transformers reads the prompt,
  ONNX Runtime writes the tokens), and the choice of decoder and draft ("fp32", "int8", ...);
* `build` - building the decoder of a model folder once into the model cache (onnxruntime-genai's builder);
* `packing` - rewriting an fp32 decoder's exact 4-bit matrices as 4-bit blocks, losslessly;
* `engine` - the decode loop: continuous batching of concurrent answers, speculative decoding of a lone one;
* `speculative` - draft tokens (prompt lookup) and the draft length rule.

Reading the prompt through the transformers model and its key/value cache (rag.generation.prefill) is not
part of this package: the transformers backend scores continuations with it too, without any decoder, and
every loaded model holds its own prompt cache (rag.generation.models.LoadedModel).

Code outside this package imports from here, not from the modules (tests of a module's insides excepted):
tests/test_architecture.py checks it.
"""

from rag.generation.decoder.build import (
    DECODER_ENV,
    PRECISIONS,
    build_onnx_decoder,
    is_packed,
    prune_stale_decoders,
)
from rag.generation.decoder.onnx import (
    DECODERS,
    DEFAULT_DECODER,
    DEFAULT_DRAFT,
    DEFAULT_DRAFT_PACKED,
    DRAFTS,
    OnnxDecoder,
    load_onnx_decoder,
    release_decoders,
    resolve_decoder,
    resolve_draft,
)

__all__ = [
    "DECODERS",
    "DECODER_ENV",
    "DEFAULT_DECODER",
    "DEFAULT_DRAFT",
    "DEFAULT_DRAFT_PACKED",
    "DRAFTS",
    "PRECISIONS",
    "OnnxDecoder",
    "build_onnx_decoder",
    "is_packed",
    "load_onnx_decoder",
    "prune_stale_decoders",
    "release_decoders",
    "resolve_decoder",
    "resolve_draft",
]
