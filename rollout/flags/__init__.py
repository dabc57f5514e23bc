"""Feature flags: what a flag declares, how flags are stored and versioned, and the one flagd document
every protocol serves.

`spec.py` and `targeting.py` are pure (a flag as data, and flagd's targeting rules checked as data);
`store.py` is the only code that reads or writes the flag tables; `document.py` compiles all flags
and the cohort evaluators they use into one flagd flag-definition document; `publisher.py` keeps the
current document and tells subscribers (SSE, gRPC sync, OFREP) when it changes.
"""
