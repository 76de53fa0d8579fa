"""Torch modules only: CT-CLIP's CT-ViT image encoder and its checkpoint layout.

Axis legend, used in every docstring and einops pattern of this package:

- B batch, C channels (CT first, then PET);
- T, H, W voxel axes of the input volume (B, C, T, H, W); T is the slice axis, the CT-ViT's "time";
- t, h, w token-grid axes, t = T // pt, h = H // p1, w = W // p2;
- pt, p1, p2 patch sizes in voxels (slices, rows, columns);
- D token width (`dim`, 512 in CT-CLIP), n tokens in one attention sequence, N sequences.

The CT-ViT: `patch_embedding` (voxels -> tokens), `position` (continuous position bias, PEG), `attention`
(cosine attention, GEGLU feed-forward), `vq` (cosine codebook), `ctvit` (the layer stack, the encoder and its
two forward paths), `checkpoint` (reading and splitting a CT-CLIP flat state dict: the one key map).

The skills' parts: `lora` (named peft adapters, bit-exact out-of-place merge), `decoders` (UNETR decoder on
the 4 hidden states, PET skip), `mtlr` (the one survival parameterisation), `prognosis` (clinical encoders,
adapters, fusion, MTLR head), `text` (CT-CLIP's BERT), `classification` (zero-shot CLIP head) and
`skill_model` (a skill assembled on the shared backbone).
"""
