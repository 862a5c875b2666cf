#!/usr/bin/env bash
# A real text corpus of >= 10M tokens from Debian 12 (bookworm) documentation packages:
# the reStructuredText sources of the Python 3.11 and Linux 6.1 manuals (Sphinx `_sources/*.rst.txt`)
# and the Perl manual pages (`*.pod`). Real line structure (prose, code blocks, tables), not
# sampled text. Train/test split by file (every 20th file, in sorted path order, is test), so
# no test line shares a document with the training text; `lmkit train --input train.txt`
# carves its own held-out lines out of train.txt.
#
#   bash scripts/make_real_corpus.sh [CACHE_DIR]     # default /work/corpora-cache/debian_docs
#
# Outputs CACHE_DIR/{train.txt,test.txt,SHA256SUMS}. Needs apt-get (download only: nothing is
# installed) and dpkg-deb. Package versions are pinned; if the mirror has moved on, edit PKGS
# (the counts in docs/scale.md were measured on these exact versions).
set -euo pipefail
CACHE=${1:-/work/corpora-cache/debian_docs}
PKGS="python3.11-doc=3.11.2-6+deb12u8 linux-doc-6.1=6.1.176-1 perl-doc=5.36.0-7+deb12u3"
mkdir -p "$CACHE/debs" "$CACHE/x"
cd "$CACHE/debs"
for p in $PKGS; do
  f=$(ls "${p%%=*}"_*.deb 2>/dev/null || true)
  [ -n "$f" ] || apt-get download "$p"
done
for d in *.deb; do dpkg-deb -x "$d" ../x; done
cd "$CACHE"
# the file list, in a locale-independent order
LC_ALL=C find x/usr/share/doc/python3.11/html/_sources x/usr/share/doc/linux-doc-6.1/html/_sources \
  -type f -name '*.rst.txt' | LC_ALL=C sort > files.lst
LC_ALL=C find x/usr/share/perl -type f -name '*.pod' | LC_ALL=C sort >> files.lst
: > train.txt.tmp; : > test.txt.tmp
awk '{ print (NR % 20 == 0 ? "test" : "train") "\t" $0 }' files.lst | while IFS=$'\t' read -r split f; do
  # strip trailing whitespace and CR; blank lines are kept (lmkit skips them, KenLM too after grep)
  sed -e 's/[[:space:]]*$//' "$f" >> "$split.txt.tmp"
done
mv train.txt.tmp train.txt; mv test.txt.tmp test.txt
sha256sum train.txt test.txt > SHA256SUMS
wc -l -c train.txt test.txt
