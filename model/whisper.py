"""Whisper for the dialogue gate: transformers' implementation, weights from a local folder only.

One encoder pass per clip serves three readings: the language the clip speaks (Whisper's language
identification: the first decoder step after <|startoftranscript|>, restricted to language
tokens), the probability that it holds no speech (the same step's <|nospeech|> token) and the
transcript, decoded greedily with the declared language forced.

Chosen over faster-whisper (measured side by side: README "Dialogue gate"): it loads the folder
`hf download openai/whisper-*` leaves, safetensors only, with no conversion step, shares torch
and the GPU with the render model, and adds no dependency.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                          WhisperTokenizer)

from .errors import CheckpointError
from .pipeline import torch_threads
from .prompt import LANGUAGES
from .speech import SAMPLE_RATE, Transcript, check_whisper_folder, mono_16k

WINDOW_SECONDS = 30  # Whisper hears 30 s at a time; clips are at most 10 s
# Greedy decoding stops at <|endoftext|>; this cap only ends a model that loops. Fast CJK speech is
# about 8 characters a second, roughly as many tokens.
TOKENS_PER_SECOND = 15


class WhisperRecognizer:
    """A Whisper checkpoint, loaded once; one clip at a time.

    cpu_threads: intra-op threads while transcribing on CPU (None = leave torch's setting); as for the
    tiny render preset, 1 keeps a small model from stalling in OpenMP spin-waits on a busy machine."""

    backend = "whisper"

    def __init__(self, folder: str | Path | None, device: str | None = None, cpu_threads: int | None = None):
        folder = check_whisper_folder(folder)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else None
        self.features = WhisperFeatureExtractor.from_pretrained(folder, local_files_only=True)
        self.tokenizer = WhisperTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = WhisperForConditionalGeneration.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=dtype).to(self.device).eval()
        generation = self.model.generation_config
        lang_to_id = getattr(generation, "lang_to_id", None)
        if not lang_to_id:
            raise CheckpointError(f"Whisper folder {folder}: generation_config.json has no lang_to_id: an English-only "
                                  "Whisper cannot identify languages; stage a multilingual one")
        self._language_ids = {token.strip("<|>"): token_id for token, token_id in lang_to_id.items()}
        self._no_speech_id = next((self.tokenizer.convert_tokens_to_ids(t) for t in ("<|nospeech|>", "<|nocaptions|>")
                                   if t in self.tokenizer.get_vocab()), None)
        self._start = torch.tensor([[generation.decoder_start_token_id]], device=self.device)
        # Whisper before large-v3 has no <|yue|>: it cannot tell Cantonese from Mandarin, so it is not offered.
        self.languages = frozenset(code for code in LANGUAGES if code in self._language_ids)

    def transcribe(self, audio: np.ndarray, rate: int, language: str) -> Transcript:
        if language not in self.languages:
            raise ValueError(f"Whisper cannot transcribe language {language!r}: "
                             f"this checkpoint knows {', '.join(sorted(self.languages))}")
        started = time.perf_counter()
        audio = mono_16k(audio, rate)
        if len(audio) > WINDOW_SECONDS * SAMPLE_RATE:
            raise ValueError(f"audio is {len(audio) / SAMPLE_RATE:.1f} s; "
                             f"the dialogue gate hears at most {WINDOW_SECONDS} s")
        with torch_threads(self.cpu_threads), torch.inference_mode():
            return self._transcribe(audio, language, started)

    def _transcribe(self, audio: np.ndarray, language: str, started: float) -> Transcript:
        features = self.features(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        encoded = self.model.get_encoder()(features.to(self.device, self.model.dtype))
        first = self.model(encoder_outputs=encoded, decoder_input_ids=self._start).logits[0, -1].float()
        codes = list(self._language_ids)
        language_probs = first[[self._language_ids[c] for c in codes]].softmax(-1)
        best = int(language_probs.argmax())
        no_speech = None if self._no_speech_id is None else float(first.softmax(-1)[self._no_speech_id])
        # Greedy (the checkpoint's defaults: one beam, no sampling); a copy, so no length setting clashes.
        generation = copy.deepcopy(self.model.generation_config)
        generation.max_length, generation.max_new_tokens = None, int(16 + TOKENS_PER_SECOND * len(audio) / SAMPLE_RATE)
        tokens = self.model.generate(encoder_outputs=encoded, generation_config=generation, return_timestamps=False,
                                     language=language, task="transcribe")
        text = self.tokenizer.decode(tokens[0], skip_special_tokens=True).strip()
        return Transcript(text=text, language=language, language_detected=codes[best],
                          language_probability=float(language_probs[best]), no_speech_probability=no_speech,
                          backend=self.backend, seconds=time.perf_counter() - started)


def save_tiny_random_whisper(folder: str | Path, seed: int = 0) -> Path:
    """A random-weight Whisper in the real folder layout, made with no download, for tests and
    benchmarks: every loading and decoding step is the real one; the text it hears is garbage.

    Its vocabulary is the byte-level alphabet plus Whisper's special tokens in Whisper's order
    (<|endoftext|>, <|startoftranscript|>, the 100 language tokens of large-v3, task and
    timestamp tokens), so ids, prompts and decoding behave as with a released checkpoint."""
    from tokenizers import pre_tokenizers
    from transformers.models.whisper.tokenization_whisper import LANGUAGES as WHISPER_LANGUAGES

    folder = Path(folder)
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = WhisperTokenizer(vocab=vocab, merges=[])  # adds <|endoftext|>
    languages = [f"<|{code}|>" for code in WHISPER_LANGUAGES]
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<|startoftranscript|>", *languages, "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
        "<|nospeech|>", "<|notimestamps|>"]})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    ids = tokenizer.convert_tokens_to_ids
    end = ids("<|endoftext|>")
    # Random weights would emit special and timestamp tokens; suppressed, the garbage is text to read.
    begin_suppress, suppress = [ids("\u0120"), end], list(range(end + 1, len(tokenizer)))  # "Ġ": a lone space
    # init_std 0.3, not 0.02: with tiny weights every input decodes the same token, hiding whether the
    # language token and the audio reach the decoder.
    config = WhisperConfig(vocab_size=len(tokenizer), num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
                           decoder_start_token_id=ids("<|startoftranscript|>"), bos_token_id=end, eos_token_id=end,
                           pad_token_id=end, suppress_tokens=suppress, begin_suppress_tokens=begin_suppress, init_std=0.3)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, bos_token_id=end, eos_token_id=end, pad_token_id=end,
        max_length=448, is_multilingual=True, no_timestamps_token_id=ids("<|notimestamps|>"),
        lang_to_id={token: ids(token) for token in languages},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        suppress_tokens=suppress, begin_suppress_tokens=begin_suppress)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder
