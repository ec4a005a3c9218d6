"""Long texts: one package for everything past a single generation.

- `split.py`: whole texts -> chunks that fit one generation (sentences, clauses, words; a short first chunk);
- `narrate.py`: the schedule that speaks the chunks of many texts in batches, in one voice each, and joins them;
- `joins.py`: trimming, fading and pausing between chunks;
- `dialogue.py`: scripts of several speakers, each turn in its speaker's voice;
- `subtitles.py`: SubRip and WebVTT from the segments.
"""
