"""The file room: what lmkit reads from users and writes for them, checked and atomic.

- ``files``: outputs — refuse before any work an output that is an input or a model being read,
  write by temp file + rename (umask respected), replace only lmkit's own artifacts;
- ``scratch``: temporary build folders with an owner marker, and the sweep that removes those a
  killed lmkit process left (SIGKILL, the OOM killer, a power loss);
- ``readfile``: the one bounded reader of untrusted input files (regular file, size limit, hash);
- ``npyfile``: disk-backed 1-d ``.npy`` arrays, appended piecewise, mapped read-only;
- ``store``: model folders — layout, the one manifest check for every folder kind, arrays
  validated on load (indices in range, shapes consistent, values finite);
- ``jsonrows``: ``lmkit score``'s JSON Lines rows written by compiled code, byte for byte the
  f-string rows (floats as ``repr``).

This file imports nothing, so importing one module of the room loads only that module.
"""
