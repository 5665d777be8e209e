//! A strict checker for RFC 8949 §4.2.1 core deterministic CBOR, run on untrusted bytes before
//! any decoder sees them. It does not build values; it only walks the encoding.
