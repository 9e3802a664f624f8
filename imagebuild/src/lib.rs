//! imagebuild: customizes an upstream Raspberry Pi OS image into a flashable K3s node image.
