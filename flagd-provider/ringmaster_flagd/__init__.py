"""Ringmaster's OpenFeature provider for apps (distribution `ringmaster-flagd-provider`).

`RingmasterProvider` evaluates flagd flag documents in-process, fed by a local file or by the
Ringmaster service; `Evaluator` is the evaluator behind it, usable on its own (the service's OFREP
endpoints use it). Layout, one module per concept:

* provider.py: the OpenFeature provider: sources in, events out, evaluation through the evaluator;
* source.py, file_source.py, http_source.py, sse.py, disk_cache.py: where documents come from;
* evaluator.py: documents loaded and compiled, `resolve` answering in OpenFeature's terms;
* document.py: reading and checking a document, `$evaluators` substituted;
* compile.py: JsonLogic compiled into closures; jsonlogic.py and operators.py: the operations;
  coercion.py: JsonLogic's value coercions; cbor.py: the bytes `fractional` hashes.
"""

from ringmaster_flagd.errors import DocumentError, RingmasterFlagdError, SourceError
from ringmaster_flagd.evaluator import Evaluator, FlagType, Resolution
from ringmaster_flagd.provider import RingmasterProvider

__version__ = "0.1.0"

__all__ = [
    "DocumentError",
    "Evaluator",
    "FlagType",
    "Resolution",
    "RingmasterFlagdError",
    "RingmasterProvider",
    "SourceError",
]
