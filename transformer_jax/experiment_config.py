"""The experiment ConfigDict every `configs/*.py` starts from: each field, its default, its meaning.

Blocks: top-level loop settings, `model` (TransformerConfig fields; vocabulary and special ids
come from the tokenizer), `data` (read by `transformer_jax.data.create_datasets`), `optim`.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Transformer-base on WMT14 en-de with the paper's optimizer; configs override from here."""
  c = ml_collections.ConfigDict()
  c.seed = 0                      # Parameter init, dropout (fold_in(step)) and data shuffling.
  c.num_train_steps = 100_000     # Steps (micro-batches when optim.grad_accum_steps > 1).
  c.log_every_steps = 100         # metrics.jsonl / TensorBoard / progress-bar interval.
  c.eval_every_steps = 5_000      # Eval loss (and BLEU when eval_bleu_examples > 0); 0 = never.
  c.checkpoint_every_steps = 5_000  # Orbax checkpoint interval (plus the last step, and SIGTERM).
  c.keep_checkpoints = 5          # Keep the last K checkpoints (the paper averages the last 5)...
  c.keep_every_steps = 0          # ...plus every N-th step forever (0 = none).
  c.eval_bleu_examples = 0        # Decode this many eval sentences for eval_bleu (-1 = all).
  c.eval_beam_size = 4            # Beam size for eval_bleu (1 = greedy).
  c.eval_bleu_tokenize = "13a"    # sacreBLEU tokenizer: 13a on raw text, "none" on tokenized text.
  c.num_sample_translations = 3   # Sample translations printed at the end.
  c.fsdp = False                  # Shard parameters and optimizer state over the data axis.

  c.model = ml_collections.ConfigDict()
  m = c.model
  m.d_model = 512                 # Width of embeddings and every sub-layer output.
  m.num_heads = 8                 # Attention heads h.
  m.d_ff = 2048                   # Inner width of the feed-forward network.
  m.num_encoder_layers = 6        # N (encoder).
  m.num_decoder_layers = 6        # N (decoder).
  m.dropout_rate = 0.1            # P_drop on embeddings and every sub-layer output.
  m.attention_dropout_rate = 0.0  # Dropout on attention weights.
  m.max_len = 512                 # Longest position (size of a learned position table).
  m.share_embeddings = True       # One matrix for source, target and output projection.
  m.pre_norm = False              # LayerNorm before sub-layers (+ final) instead of after.
  m.dtype = "auto"                # Computation dtype: auto = bfloat16 on GPU/TPU, float32 on CPU.
  m.param_dtype = "float32"       # Parameters and optimizer state.
  m.activation = "relu"           # Feed-forward non-linearity: relu | gelu.
  m.positional = "sinusoidal"     # sinusoidal | learned.
  m.attention_impl = "auto"       # auto | xla | cudnn | plain.
  m.scan_layers = False           # nn.scan over layers: faster compiles.
  m.remat = False                 # Recompute activations in the backward pass (saves memory).

  c.data = ml_collections.ConfigDict()
  d = c.data
  d.dataset = "wmt14"             # "synthetic", a Hugging Face hub id, or "" when data_dir is set.
  d.hub_config = "de-en"          # The hub dataset's configuration name.
  d.data_dir = ""                 # Local corpus directory; when set it wins over the hub id.
  d.file_pattern = "{split}.{lang}"  # File names in data_dir (".gz" also found).
  d.source_lang = "en"            # Translate from...
  d.target_lang = "de"            # ...to.
  d.train_split = "train"         # Split names.
  d.eval_split = "validation"
  d.vocab_size = 37_000           # SentencePiece vocabulary (shared by both languages).
  d.max_len = 64                  # Drop pairs with more tokens than this on either side.
  d.batch_size = 384              # Global rows per batch (divisible by the device count):
  d.seq_len = 64                  # x tokens per packed row x ~96% packing ~ 24k tokens per side.
  d.packing = True                # Pack several pairs per row (else one pair per row).
  d.eval_batch_size = 64          # Global rows per eval batch.
  d.num_eval_examples = -1        # Eval examples used (-1 = all).
  d.process_sharding = "shard"    # "shard": each process reads its own examples; "rows": every
                                  # process builds the global batch and keeps its rows.
  d.source_field = ""             # Hub datasets with plain columns: the source column...
  d.target_field = ""             # ...and the target column ("" = use translation_field).
  d.translation_field = "translation"  # Hub datasets with a {lang: text} column (WMT14).
  d.tokenizer_type = "bpe"        # SentencePiece model type: bpe | unigram.
  d.tokenizer_max_sentences = 2_000_000  # Sentences sampled to train the tokenizer.
  d.eval_max_len = 0              # Drop longer eval pairs (0 = keep all, so BLEU sees everything).
  d.packing_bins = 0              # First-fit packing bins (0 = max(rows, 256)).
  d.prefetch = 2                  # Batches prepared ahead in a background thread.
  d.synthetic_task = "dates"      # For dataset="synthetic": dates | numbers.
  d.synthetic_train_size = 20_000
  d.synthetic_eval_size = 500
  d.synthetic_seed = 0            # Generator seed (train and eval are disjoint).

  c.optim = ml_collections.ConfigDict()
  o = c.optim
  o.schedule = "paper"            # paper | rsqrt | cosine | constant.
  o.warmup_steps = 4_000          # Linear warmup length.
  o.schedule_scale = 1.0          # Multiplier of the paper's schedule.
  o.peak_learning_rate = 1e-3     # Peak for rsqrt / cosine / constant.
  o.end_learning_rate_fraction = 0.0  # Cosine: final learning rate as a fraction of the peak.
  o.b1 = 0.9                      # Adam beta1 (paper: 0.9).
  o.b2 = 0.98                     # Adam beta2 (paper: 0.98).
  o.eps = 1e-9                    # Adam epsilon (paper: 1e-9).
  o.weight_decay = 0.0            # AdamW, decoupled: p -= lr * wd * p (paper: 0).
  o.weight_decay_mask = "all"     # Decayed: all | matrices (kernels, embeddings; no biases, norms).
  o.label_smoothing = 0.1         # epsilon_ls (paper: 0.1).
  o.grad_clip_norm = 0.0          # Global-norm clipping (0 = off).
  o.grad_accum_steps = 1          # Accumulate gradients over k batches (optax.MultiSteps).
  return c
