"""Bark's constants, each defined once. Values follow Suno's original code and the public checkpoints."""

SAMPLE_RATE = 24_000  # EnCodec 24 kHz model
CONTEXT_LEN = 1024  # block_size of all three GPTs

# Semantic GPT vocabularies
SEMANTIC_VOCAB_SIZE = 10_000  # semantic tokens 0..9999
SEMANTIC_PAD_TOKEN = 10_000  # also the semantic EOS token
TEXT_ENCODING_OFFSET = 10_048  # BERT ids are shifted past the semantic vocabulary (10 000) + 48 spare ids
TEXT_PAD_TOKEN = 129_595  # = TEXT_ENCODING_OFFSET + 119 547 (mBERT vocab size)
SEMANTIC_INFER_TOKEN = 129_599  # last id of the semantic model's 129 600-entry input vocabulary
MAX_TEXT_TOKENS = 256  # text (and semantic history) window of the semantic prompt
MAX_SEMANTIC_TOKENS = 768  # = CONTEXT_LEN - MAX_TEXT_TOKENS - 1 (infer token) + 1 (last token is never fed back)

# Coarse GPT
CODEBOOK_SIZE = 1024  # entries per EnCodec codebook
N_COARSE_CODEBOOKS = 2  # codebooks 0-1 come from the coarse stage
N_FINE_CODEBOOKS = 8  # 6 kbps EnCodec = 8 codebooks
COARSE_SEMANTIC_PAD_TOKEN = 12_048  # = SEMANTIC_VOCAB_SIZE + N_COARSE_CODEBOOKS * CODEBOOK_SIZE
COARSE_INFER_TOKEN = 12_050
SEMANTIC_RATE_HZ = 49.9
COARSE_RATE_HZ = 75  # EnCodec frames per second = SAMPLE_RATE / SAMPLES_PER_FRAME
SEMANTIC_TO_COARSE_RATIO = COARSE_RATE_HZ / SEMANTIC_RATE_HZ * N_COARSE_CODEBOOKS  # 3.006 coarse tokens per semantic token
MAX_COARSE_HISTORY = 630  # coarse tokens of history kept per window (= 315 frames, 4.2 s)
MAX_COARSE_INPUT = 256  # semantic tokens fed per coarse window
SLIDING_WINDOW_LEN = 60  # coarse tokens generated per window (30 frames)

# Fine GPT
FINE_WINDOW = 1024  # frames per fine window (= CONTEXT_LEN)
FINE_STRIDE = 512  # window step; also the most fine history frames kept from a voice
FINE_PAD_TOKEN = CODEBOOK_SIZE  # "not yet predicted" code in the fine input

SAMPLES_PER_FRAME = 320  # = 8 * 5 * 4 * 2, the EnCodec decoder's upsampling ratios

# Generation defaults of Suno's original code
DEFAULT_SEMANTIC_TEMPERATURE = 0.7
DEFAULT_COARSE_TEMPERATURE = 0.7
DEFAULT_FINE_TEMPERATURE = 0.5
DEFAULT_MIN_EOS_P = 0.2
