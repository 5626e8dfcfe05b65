//! [`BackgroundKubeSim`]: a simulator on its own runtime threads, for synchronous test
//! harnesses (no tokio runtime needed by the caller).

use std::ops::{Deref, DerefMut};

use crate::{KubeSim, Options};

/// A [`KubeSim`] served by a private multi-threaded tokio runtime. Derefs to [`KubeSim`];
/// the async [`KubeSim::restart`] has the blocking [`BackgroundKubeSim::restart`].
pub struct BackgroundKubeSim {
    // Declared first so the server is dropped before its runtime.
    sim: KubeSim,
    rt: tokio::runtime::Runtime,
}

impl BackgroundKubeSim {
    /// Starts on an ephemeral port with default options.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(0, Options::default())
    }

    /// Starts on 127.0.0.1:`port` (0 = ephemeral).
    pub fn start_with(port: u16, options: Options) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kube-sim")
            .enable_all()
            .build()?;
        let sim = rt.block_on(KubeSim::start_with(port, options))?;
        Ok(BackgroundKubeSim { sim, rt })
    }

    /// Serves again after [`KubeSim::stop`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.rt.block_on(self.sim.restart())
    }
}

impl Deref for BackgroundKubeSim {
    type Target = KubeSim;
    fn deref(&self) -> &KubeSim {
        &self.sim
    }
}

impl DerefMut for BackgroundKubeSim {
    fn deref_mut(&mut self) -> &mut KubeSim {
        &mut self.sim
    }
}
