"""Real survey input: SDSS fields read into what the rest of the code speaks (sky-subtracted
nanomaggies per band on one pixel grid, the sky and noise per pixel, the PSF in the project's
own form, the WCS and the mask planes).

Modules: :mod:`.files` (the SDSS archive layout, opening FITS files), :mod:`.calibration`
(psField and photoField: PSF, gain, dark variance, calibration), :mod:`.frame` (one band's
frame, its sky grid and calibration vector), :mod:`.masks` (fpM mask planes), :mod:`.align`
(bands onto the reference band's pixel grid by their WCS), :mod:`.field` (a whole field),
:mod:`.values` (the config's ``${survey:...}`` values) and :mod:`.psf_check` (the psField PSF
against bright stars). Nothing is imported here, so that the config can use :mod:`.values`.
"""
