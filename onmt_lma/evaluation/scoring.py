"""Scores of a translated test set: sacreBLEU and chrF on detokenized text (with their signatures), and
tokenized BLEU as ``multi-bleu.perl`` computes it (the paper's number).
"""

from pathlib import Path

import sacrebleu
import sentencepiece as spm
from sacremoses import MosesDetokenizer


def _score(metric, hyps, refs):
    score = metric.corpus_score(hyps, [refs])
    return {"score": score.score, "signature": str(metric.get_signature()), "text": str(score)}


def text_scores(hyp_tok, hyp_detok, ref_tok, ref_detok):
    """Detokenized sacreBLEU and chrF (with signatures); tokenized BLEU (multi-bleu.perl) where ``ref_tok``."""
    return {
        "bleu": _score(sacrebleu.BLEU(), hyp_detok, ref_detok),
        "chrf": _score(sacrebleu.CHRF(), hyp_detok, ref_detok),
        "bleu_tok": _score(sacrebleu.BLEU(tokenize="none", force=True), hyp_tok, ref_tok) if ref_tok else None,
    }


def postprocess(lines, corpus_dir):
    """Model output -> (Moses-tokenized, detokenized) text."""
    spm_model = Path(corpus_dir) / "spm.model"
    if spm_model.exists():
        sp = spm.SentencePieceProcessor(model_file=str(spm_model))
        tokenized = [sp.decode(line.split()) for line in lines]
    else:
        tokenized = list(lines)
    detokenizer = MosesDetokenizer(lang="en")
    return tokenized, [detokenizer.detokenize(line.split()) for line in tokenized]
