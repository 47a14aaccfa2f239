"""maet's Hydra sweeper plugin (Hydra instantiates sweepers from the `hydra_plugins` namespace
only): hydra-optuna-sweeper's OptunaSweeper, resumable from its sweep dir; the logic is
`maet.reporting.optuna_search.resumed`."""

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class ResumableOptunaSweeper(OptunaSweeper):
    """OptunaSweeper that continues the search its sweep dir already holds (maet.reporting.optuna_search)."""

    def sweep(self, arguments):
        from maet.reporting.optuna_search import resumed

        with resumed(self.sweeper, arguments):
            return super().sweep(arguments)
