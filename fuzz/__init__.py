"""edgetrain fuzzers (issue 6, section 2).

    fuzz/fuzz_idx.py         the IDX reader (edgetrain/data/idx.py)
    fuzz/fuzz_checkpoint.py  et.load (edgetrain/checkpoint.py)
    fuzz/fuzz_ops.py         the ops: hypothesis property tests (long profile)
                             and malformed calls into edgetrain._C / nn.functional
    fuzz/run_all.py          every target for --minutes M each, record in
                             benchmarks/results/fuzz/

Every target runs in a child process (fuzz/harness.py), so a segfault or an
abort is seen by the parent (negative return code) and the input that caused
it is kept under benchmarks/results/fuzz/crashes/ for reproduction with
`python fuzz/fuzz_<target>.py --replay FILE`.
"""
