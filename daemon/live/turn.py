"""The model's turn as it arrives: its audio to the speaker (unless the user talked over it), the transcripts in
the order things were said, and when the turn is over. A new connection starts with a clean turn, so a half-heard
turn can neither silence the next answer nor hold off the idle timer."""

from __future__ import annotations

import logging
from typing import Any

from google.genai import types

from ..audio.frames import OUTPUT_RATE, output_seconds
from ..events import Emit, Interrupted, Speaking, Transcript, TurnEnded


class Turn:
    def __init__(self, speaker: Any, emit: Emit, log: logging.LoggerAdapter) -> None:
        self.speaker = speaker
        self.emit = emit
        self.log = log
        self.reset()

    def reset(self) -> None:
        self.model_turn = False  # the model is in a turn (its audio may still be arriving)
        self.discarded = False  # after a local barge-in: the rest of this model turn is not played
        self.completed = 0  # turns ended so far (complete or interrupted)
        self._heard: list[str] = []
        self._said: list[str] = []

    @property
    def speaking(self) -> bool:
        """The model is in a turn that is being played (not one the user talked over)."""
        return self.model_turn and not self.discarded

    def barge_in(self) -> int:
        """The user talked over the model: silence the speaker now, drop the rest of this turn."""
        dropped = self.speaker.flush()
        self.discarded = self.model_turn
        self.log.info("barge-in: dropped %.2fs of queued speech", output_seconds(dropped))
        self.emit(Interrupted(dropped, local=True))
        return dropped

    def content(self, content: types.LiveServerContent) -> bool:
        """One serverContent; True when it carried something said by either side (for the idle timer)."""
        said = False
        if content.input_transcription and content.input_transcription.text:
            self._heard.append(content.input_transcription.text)
            said = True
        for part in content.model_turn.parts if content.model_turn and content.model_turn.parts else []:
            blob = part.inline_data
            if blob is None or not blob.data:
                continue  # text, thoughts, a mirrored function call: toolCall carries the calls
            said = True
            if not self.model_turn:
                self.model_turn = True
                self.flush_heard()
                self.emit(Speaking())
            if not self.discarded:
                if blob.mime_type and f"rate={OUTPUT_RATE}" not in blob.mime_type:
                    self.log.warning("model audio in %s, expected %d Hz", blob.mime_type, OUTPUT_RATE)
                self.speaker.play(blob.data)
        if content.output_transcription and content.output_transcription.text:
            self._said.append(content.output_transcription.text)
            said = True
        if content.interrupted:
            dropped = self.speaker.flush()
            self.log.info("interrupted: dropped %.2fs of queued speech", output_seconds(dropped))
            self.emit(Interrupted(dropped, local=False))
            self.end()
        if content.turn_complete:
            self.end()
        return said

    def end(self) -> None:
        self.flush_heard()
        if self._said:
            text = "".join(self._said).strip()
            self.log.info("model: %s", text)
            self.emit(Transcript("model", text))
            self._said.clear()
        was_model_turn, self.model_turn = self.model_turn, False
        self.discarded = False
        self.completed += 1
        if was_model_turn:
            self.emit(TurnEnded())

    def flush_heard(self) -> None:
        """What the user said goes to the log before what the model does about it."""
        if self._heard:
            text = "".join(self._heard).strip()
            self.log.info("user: %s", text)
            self.emit(Transcript("user", text))
            self._heard.clear()
