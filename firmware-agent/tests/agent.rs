//! Black-box tests of the lock agent (filled in below).
