"""The nets' blind spots (Szegedy et al. 2013; Goodfellow, Shlens, Szegedy 2014; Madry
et al. 2017; Nguyen, Yosinski, Clune 2014): attacks over any classifier."""
