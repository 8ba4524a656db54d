"""The side-by-side arena: two models, every assistant turn rated, verdicts, and the paper's Figure 7."""
