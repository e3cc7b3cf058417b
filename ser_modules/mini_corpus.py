"""A tiny synthetic emotional-speech corpus, for tests, demos and smoke runs of the recipes.

Real emotion corpora cannot be shipped with the code, so this module synthesises a few
minutes of speech-like audio whose classes differ the way acted emotions do, and writes it in
the generic custom-corpus layout read by ``recipes/custom/custom_prepare.py``::

    <out_folder>/<emotion>/<speaker>_<emotion>_<nnn>.wav    16 kHz mono, 16-bit PCM
    <out_folder>/labels.csv                                path,emotion,speaker,gender

Acoustic model (a source-filter synthesiser in the spirit of Klatt, 1980):

* source: a glottal pulse train following an F0 contour (declination over the utterance,
  a rise-fall accent on some syllables, slow jitter), shaped by a two-pole low-pass whose
  pole radius sets the spectral tilt (voice quality: pressed = flat, soft = steep), plus
  aspiration noise (breathiness);
* filter: a cascade of formant resonators, one vowel per syllable, formants scaled per
  speaker (vocal-tract length); syllables start with a short consonant noise burst and are
  separated by gaps, with longer pauses between "words"; a little background noise;
* speakers (half female, half male) have their own F0, formant scale, loudness, tilt and
  speaking rate, so that speaker differences are as large as emotion differences and no
  single feature separates the classes speaker-independently;
* emotions shift the cues that the literature relates to arousal and valence: energy,
  F0 level and range, speaking rate, voice quality (Scherer, 2003, "Vocal communication of
  emotion: A review of research paradigms", Speech Communication 40; Juslin & Laukka, 2003,
  Psychological Bulletin 129). Anger and happiness are loud, high and fast; sadness is
  quiet, low, monotonous, slow and breathy; happiness has the widest F0 range, anger the
  flattest spectrum.

Generation is deterministic: every utterance draws from its own generator seeded by
``(seed, speaker, emotion, index)``, and the same call writes byte-identical files. A folder
that already holds the corpus of the same options is left untouched.
"""

import argparse
import csv
import dataclasses
import io
import logging
import os
import tempfile
import zlib

import numpy as np
import soundfile
from scipy.signal import lfilter

from ser_modules.manifest import (
    atomic_write_text,
    invalidate_preparation,
    mark_preparation_done,
    read_csv,
    skip_preparation,
)

logger = logging.getLogger(__name__)

# Bumped whenever the synthesis code changes, so that a stored corpus of an older version is redone.
GENERATOR_VERSION = 1
LABELS_FILE = "labels.csv"

# Reference RMS (about -32 dBFS) of a 0 dB utterance: leaves headroom for the loudest
# speaker/emotion combinations (+14 dB) without clipping the pulse-train peaks.
REFERENCE_RMS = 0.025
NOISE_RMS = 0.0015

# (F1, F2, F3) in Hz of an adult male vocal tract; speakers scale them.
VOWEL_FORMANTS = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (290.0, 2250.0, 2890.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
FORMANT_BANDWIDTHS = (90.0, 110.0, 170.0)


@dataclasses.dataclass(frozen=True)
class EmotionProfile:
    """How an emotion shifts the acoustic cues, relative to the speaker's neutral voice."""

    f0_shift_semitones: float  # F0 level
    f0_range_semitones: float  # height of accents and declination (F0 range)
    syllables_per_second: float  # speaking rate
    gain_db: float  # loudness
    tilt_pole: float  # glottal low-pass pole radius: higher = steeper tilt, softer voice
    breathiness: float  # aspiration noise relative to the pulse train
    accent_probability: float  # share of syllables carrying a pitch accent


EMOTION_PROFILES = {
    "neutral": EmotionProfile(0.0, 3.0, 4.0, 0.0, 0.93, 0.04, 0.35),
    "happy": EmotionProfile(3.5, 5.5, 4.6, 3.5, 0.90, 0.04, 0.6),
    "sad": EmotionProfile(-1.5, 1.0, 3.1, -5.0, 0.96, 0.12, 0.2),
    "angry": EmotionProfile(2.5, 3.5, 4.9, 7.0, 0.78, 0.02, 0.5),
}


@dataclasses.dataclass(frozen=True)
class Speaker:
    """A synthetic speaker's voice: F0, vocal-tract scale, loudness, tilt and tempo."""

    name: str
    gender: str
    f0_hz: float
    formant_scale: float
    gain_db: float
    tilt_offset: float
    rate_factor: float


def make_speakers(num_speakers, seed=0):
    """Draw ``num_speakers`` speakers, alternating female and male (``spk01`` is female)."""
    speakers = []
    for index in range(num_speakers):
        rng = np.random.default_rng([seed, 1, index])
        female = index % 2 == 0
        speakers.append(
            Speaker(
                name=f"spk{index + 1:02d}",
                gender="F" if female else "M",
                f0_hz=float(
                    rng.uniform(175.0, 240.0)
                    if female
                    else rng.uniform(90.0, 135.0)
                ),
                formant_scale=float(
                    rng.uniform(1.1, 1.22)
                    if female
                    else rng.uniform(0.92, 1.04)
                ),
                gain_db=float(rng.uniform(-4.0, 4.0)),
                tilt_offset=float(rng.uniform(-0.03, 0.03)),
                rate_factor=float(rng.uniform(0.85, 1.15)),
            )
        )
    return speakers


def _resonator(frequency, bandwidth, sample_rate):
    """Klatt's second-order resonator with unit gain at 0 Hz: ``(b, a)`` for lfilter."""
    radius = np.exp(-np.pi * bandwidth / sample_rate)
    a = [
        1.0,
        -2.0 * radius * np.cos(2.0 * np.pi * frequency / sample_rate),
        radius**2,
    ]
    return [sum(a)], a


def _raised_cosine(length):
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * (np.arange(length) + 0.5) / length)


def _plan_syllables(rng, duration, rate):
    """Lay out the syllables of an utterance: a list of (start, consonant, vowel) in seconds."""
    syllables = []
    time = rng.uniform(0.08, 0.15)  # leading silence
    end = duration - rng.uniform(0.08, 0.15)
    while True:
        period = rng.uniform(0.75, 1.25) / rate
        consonant = rng.uniform(0.02, 0.05)
        # A word boundary every few syllables: a longer pause, longer when speech is slow.
        gap = (
            rng.uniform(0.15, 0.3) * 4.0 / rate
            if rng.random() < 0.2
            else rng.uniform(0.02, 0.06)
        )
        vowel = max(period - consonant - gap, 0.06)
        if time + consonant + vowel > end:
            if syllables:
                break
            # A short, slow utterance still gets one (shortened) syllable.
            vowel = end - time - consonant
        syllables.append((time, consonant, vowel))
        time += consonant + vowel + gap
    return syllables


def synthesize_utterance(speaker, profile, duration, sample_rate, rng):
    """Synthesise one utterance of ``speaker`` speaking with ``profile``.

    Arguments
    ---------
    speaker : Speaker
        Voice of the speaker.
    profile : EmotionProfile
        Emotional shifts of the cues.
    duration : float
        Length in seconds.
    sample_rate : int
        Output rate.
    rng : numpy.random.Generator
        Source of every random choice (per-utterance variation).

    Returns
    -------
    numpy.ndarray
        ``(T,)`` float32 waveform in [-1, 1].
    """
    num_samples = int(round(duration * sample_rate))
    times = np.arange(num_samples) / sample_rate  # (T,)
    # Per-utterance variation, so that one utterance is never a copy of its class mean.
    f0_base = speaker.f0_hz * 2.0 ** (
        (profile.f0_shift_semitones + rng.normal(0.0, 0.8)) / 12.0
    )
    f0_range = profile.f0_range_semitones * rng.uniform(0.75, 1.25)
    rate = (
        profile.syllables_per_second
        * speaker.rate_factor
        * rng.uniform(0.9, 1.1)
    )
    gain_db = speaker.gain_db + profile.gain_db + rng.normal(0.0, 1.5)
    tilt_pole = float(
        np.clip(
            profile.tilt_pole + speaker.tilt_offset + rng.normal(0.0, 0.01),
            0.7,
            0.985,
        )
    )

    syllables = _plan_syllables(rng, duration, rate)

    # F0 contour in semitones around f0_base: declination, accents, slow jitter.
    semitones = f0_range * 0.4 * (0.5 - times / duration)  # (T,)
    for start, consonant, vowel in syllables:
        if rng.random() < profile.accent_probability:
            first = int((start + consonant) * sample_rate)
            length = int(vowel * sample_rate)
            semitones[first : first + length] += (
                f0_range * rng.uniform(0.5, 1.0) * _raised_cosine(length)
            )
    knots = rng.normal(0.0, 0.3, size=int(duration * 20) + 2)
    semitones += np.interp(times, np.linspace(0.0, duration, knots.size), knots)
    f0 = f0_base * 2.0 ** (semitones / 12.0)  # (T,)

    # Glottal source: one pulse per period (when the accumulated phase wraps), low-passed
    # twice to give the glottal spectral tilt, then differentiated (lip radiation).
    cycles = np.cumsum(f0) / sample_rate
    pulses = np.diff(
        np.floor(cycles), prepend=0.0
    )  # (T,) 1.0 at each glottal closure
    source = lfilter(
        [(1.0 - tilt_pole) ** 2], [1.0, -2.0 * tilt_pole, tilt_pole**2], pulses
    )
    source = np.diff(source, prepend=0.0)
    source /= np.std(source) + 1e-12
    source += profile.breathiness * 3.0 * rng.standard_normal(num_samples)

    speech = np.zeros(num_samples)
    vowels = list(VOWEL_FORMANTS)
    for start, consonant, vowel in syllables:
        # Consonant: a burst of high-passed noise (fricative/plosive release).
        first = int(start * sample_rate)
        burst_length = int(consonant * sample_rate)
        burst = lfilter([1.0, -0.95], [1.0], rng.standard_normal(burst_length))
        speech[first : first + burst_length] += (
            0.15 * burst * np.hanning(burst_length)
        )
        # Vowel: the source through the formant cascade of a random vowel.
        first += burst_length
        length = int(vowel * sample_rate)
        segment = source[first : first + length]
        formants = VOWEL_FORMANTS[vowels[rng.integers(len(vowels))]]
        for frequency, bandwidth in zip(formants, FORMANT_BANDWIDTHS):
            b, a = _resonator(
                frequency * speaker.formant_scale, bandwidth, sample_rate
            )
            segment = lfilter(b, a, segment)
        # Tukey-like envelope: quick rise, sustained nucleus, quick decay.
        envelope = np.ones(length)
        ramp = max(length // 5, 1)
        envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
        envelope[-ramp:] = np.linspace(1.0, 0.0, ramp)
        speech[first : first + length] += (
            segment * envelope * rng.uniform(0.7, 1.0)
        )

    # Loudness is set on the active (non-silent) part, so pauses do not change it.
    active = speech != 0.0
    speech *= (
        REFERENCE_RMS
        * 10.0 ** (gain_db / 20.0)
        / (np.sqrt(np.mean(speech[active] ** 2)) + 1e-12)
    )
    speech += NOISE_RMS * rng.standard_normal(num_samples)
    return np.clip(speech, -1.0, 1.0).astype(np.float32)


def _write_wav_atomically(path, waveform, sample_rate):
    # A crash mid-write must not leave a truncated wav that a later run would take as done.
    fd, tmp_path = tempfile.mkstemp(
        dir=os.path.dirname(path), prefix=".tmp_", suffix=".wav"
    )
    os.close(fd)
    try:
        soundfile.write(
            tmp_path, waveform, sample_rate, subtype="PCM_16", format="WAV"
        )
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _stable_index(name):
    # Python's hash() is salted per process; CRC32 keeps seeds equal across runs.
    return zlib.crc32(name.encode("utf-8"))


def generate_mini_corpus(
    out_folder,
    num_speakers=6,
    utterances_per_class=8,
    emotions=("neutral", "happy", "sad", "angry"),
    duration_range=(1.5, 3.5),
    sample_rate=16000,
    seed=0,
):
    """Write the synthetic emotional-speech corpus into ``out_folder`` (skipped when done).

    Arguments
    ---------
    out_folder : str
        Corpus root; receives ``<emotion>/<speaker>_<emotion>_<nnn>.wav`` and ``labels.csv``.
    num_speakers : int
        Speakers, alternately female and male (at least 2 for speaker-independent splits).
    utterances_per_class : int
        Utterances of each speaker in each emotion.
    emotions : sequence of str
        A subset of ``EMOTION_PROFILES`` (neutral, happy, sad, angry).
    duration_range : (float, float)
        Bounds in seconds of the uniformly drawn utterance durations.
    sample_rate : int
        Output rate in Hz.
    seed : int
        Seed of every random choice: the same options write byte-identical files.

    Returns
    -------
    str
        Path of ``labels.csv`` (columns ``path,emotion,speaker,gender``, paths relative to
        ``out_folder``).
    """
    unknown = [
        emotion for emotion in emotions if emotion not in EMOTION_PROFILES
    ]
    if unknown:
        raise ValueError(
            f"No acoustic profile for the emotions {unknown}: choose among {list(EMOTION_PROFILES)}."
        )
    if num_speakers < 1 or utterances_per_class < 1:
        raise ValueError(
            "num_speakers and utterances_per_class must be at least 1."
        )
    low, high = duration_range
    if not 0.5 <= low <= high:
        raise ValueError(
            f"duration_range must satisfy 0.5 <= low <= high, got {duration_range}."
        )

    options = {
        "generator_version": GENERATOR_VERSION,
        "num_speakers": num_speakers,
        "utterances_per_class": utterances_per_class,
        "emotions": list(emotions),
        # The profiles themselves, so that retuning one invalidates a stored corpus.
        "profiles": {
            emotion: dataclasses.asdict(EMOTION_PROFILES[emotion])
            for emotion in emotions
        },
        "duration_range": [float(low), float(high)],
        "sample_rate": sample_rate,
        "seed": seed,
    }
    speakers = make_speakers(num_speakers, seed)
    utterances = [
        (
            f"{emotion}/{speakers[speaker_index].name}_{emotion}_{index:03d}.wav",
            emotion,
            speaker_index,
            index,
        )
        for emotion in emotions
        for speaker_index in range(num_speakers)
        for index in range(utterances_per_class)
    ]
    labels_path = os.path.join(out_folder, LABELS_FILE)
    outputs = [labels_path] + [
        os.path.join(out_folder, utterance[0]) for utterance in utterances
    ]
    if skip_preparation(out_folder, options, outputs):
        logger.info(
            "The mini corpus in %s already matches these options: skipping generation.",
            out_folder,
        )
        return labels_path
    _remove_stale_outputs(out_folder, outputs)
    invalidate_preparation(out_folder)

    labels = io.StringIO()
    writer = csv.writer(labels, lineterminator="\n")
    writer.writerow(["path", "emotion", "speaker", "gender"])
    for emotion in emotions:
        os.makedirs(os.path.join(out_folder, emotion), exist_ok=True)
    for path, emotion, speaker_index, index in utterances:
        # One generator per utterance: its audio does not depend on which others are made.
        rng = np.random.default_rng(
            [seed, 2, speaker_index, _stable_index(emotion), index]
        )
        speaker = speakers[speaker_index]
        duration = rng.uniform(low, high)
        waveform = synthesize_utterance(
            speaker, EMOTION_PROFILES[emotion], duration, sample_rate, rng
        )
        _write_wav_atomically(
            os.path.join(out_folder, path), waveform, sample_rate
        )
        writer.writerow([path, emotion, speaker.name, speaker.gender])
    # labels.csv last, then the options record: an interrupted run is redone next time.
    atomic_write_text(labels_path, labels.getvalue())
    mark_preparation_done(out_folder, options, outputs)
    logger.info(
        "Wrote %d utterances of the mini corpus to %s",
        len(utterances),
        out_folder,
    )
    return labels_path


def _remove_stale_outputs(out_folder, outputs):
    """Delete the wavs of a previous generation that the new options no longer produce."""
    labels_path = os.path.join(out_folder, LABELS_FILE)
    if not os.path.isfile(labels_path):
        return
    keep = {os.path.abspath(path) for path in outputs}
    for row in read_csv(labels_path):
        old = os.path.abspath(os.path.join(out_folder, row["path"]))
        if old not in keep and os.path.isfile(old):
            os.remove(old)


def main(argv=None):
    """Command line: ``python -m ser_modules.mini_corpus OUT_FOLDER [--seed N] ...``."""
    parser = argparse.ArgumentParser(
        description="Write the synthetic mini emotional-speech corpus."
    )
    parser.add_argument("out_folder")
    parser.add_argument("--num_speakers", type=int, default=6)
    parser.add_argument("--utterances_per_class", type=int, default=8)
    parser.add_argument(
        "--emotions", nargs="+", default=["neutral", "happy", "sad", "angry"]
    )
    parser.add_argument(
        "--duration_range", type=float, nargs=2, default=[1.5, 3.5]
    )
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    labels_path = generate_mini_corpus(
        args.out_folder,
        num_speakers=args.num_speakers,
        utterances_per_class=args.utterances_per_class,
        emotions=tuple(args.emotions),
        duration_range=tuple(args.duration_range),
        sample_rate=args.sample_rate,
        seed=args.seed,
    )
    print(labels_path)


if __name__ == "__main__":
    main()
