"""A delivered file is named after its shot, language, aspect and take, with its master's extension."""

import pytest

from catalog.deliverables import file_name
from catalog.ids import InvalidId


def test_a_pcm_master_is_delivered_as_a_mov_and_the_extension_is_validated():
    assert file_name("hero", "en", "16x9", 2) == "hero_en_16x9_t2.mp4"
    assert file_name("hero", None, "9x16", 1, "mov") == "hero_9x16_t1.mov"
    with pytest.raises(InvalidId):
        file_name("hero", "en", "16x9", 2, "mov/../../x")
