"""Speed and accelerator checks of transformer_jax, run from the repository root.

Tools (`python -m benchmarks.NAME --help` for each):

  train_benchmark   our training step beside PyTorch `nn.Transformer`, same shapes (CPU)
  decode_benchmark  beam search beside CTranslate2 and Hugging Face `generate` (CPU)
  data_benchmark    the Multi30k input pipeline: pairs/s, tokens/s, packing
  input_pipeline    the input pipeline at WMT scale per worker count, against what each TPU slice
                    and GPU consumes per host
  decoding_rule     whether tune_decoding's choice holds on unseen halves of the dev set
  profile_step      where the compiled training step spends its time, by kind of work (CPU)
  matmul_ceiling    the step's matmuls alone, each at its best: the bound no step can beat (CPU)
  accelerator       what only a GPU or TPU shows: bf16 correctness, throughput, MFU
  harness           helpers for shell scripts (`python -m benchmarks.harness tcmalloc`)

Shared modules: `harness` (side-by-side worker processes), `batches` (random and packed
batches, numpy only), `workload` (model shapes, workloads and our training step, built through
`transformer_jax.steps.compile_steps`), `hlo` (optimized HLO and profiler traces), `peers`
(PyTorch, Hugging Face and CTranslate2 sides; no jax), `accelerator_checks` and
`accelerator_speed` (the accelerator check's sections).
"""
