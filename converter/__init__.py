"""The converter: find a model's transformer MLPs and swap them for fitted `WeightlessBlock`s.

Entry points: `quweit.converter.convert.convert` (detect, calibrate, fit, choose layers, rewrite),
`quweit.converter.convert.replace_mlps` (the structural rewrite alone), `quweit.converter.minilm` (the
embedded example) and the `quweit-convert` command (`quweit.converter.cli`). The fitting policy lives
here, not in `custom_ops`: closed form and encoding fit (`closed_form`, `encoding_fit`, `fitting`), the
low-rank bypass (`bypass`), per-block reconstruction (`reconstruct`) and the recipe that ends in
end-to-end distillation (`distill`). Submodules are imported on
use, so `import quweit.converter` stays light.
"""
