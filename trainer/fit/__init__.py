"""Fitting a network: the session every phase shares, the fit loop with early stopping and
checkpoints, and training on images (fine-tuning, or the whole network).

    session.py    seeds, the GPU policy, the strategy, class weights, checkpoint places
    loop.py       compile and fit with early stopping; the optimizer and its schedule
    resume.py     per-epoch checkpoints, so a rerun resumes
    multiworker.py  the loop under MultiWorkerMirroredStrategy
    on_images.py  fine-tuning the backbone's top, and training the whole network
"""
